"""`ditlab ablate --devices cpu,cpu`: two worker processes give the sequential runner's scores (bitwise), a
worker killed mid-unit has its unit re-run, and bad --gpus / --devices flags are one-line errors."""
import json

import pytest
import torch

from ditlab.cli import main
from ditlab.experiments.ablation_parallel import KILL_ENV

from tests.experiments.test_ablation import write_study

# a single-scale variant, a LIFT one with an error grid, and a cascade waiting for its lo_variant's run
SPEC = """\
config: tiny.yaml
seeds: [0]
budget: {steps: 2}
sample: {num: 5, seed: 3, sampler: euler, steps: 2, batch_size: 3}
errors: {grid: 2, num: 4, batch_size: 4}
variants:
  joint: {overrides: [task.kind=lift, lift.train_mode=clean_lo], paths: [diagonal, dp-hi, cascade], lo_variant: small}
  small: {overrides: [task.kind=image, data.image_size=8], paths: [default]}
  single: {overrides: [task.kind=image], paths: [default]}
"""
TIMING = ("sample_seconds", "train_seconds", "train_wall_seconds", "fid_seconds", "load_seconds")


@pytest.fixture
def study(tmp_path, monkeypatch):
    data, net = write_study(tmp_path, monkeypatch, SPEC, 16)

    def args(out):
        return ["ablate", str(tmp_path / "ablation.yaml"), "--out", str(tmp_path / out), "--ref", str(data),
                "--inception", str(net), "--set", f"data.path={data}", "--data", str(data), "--device", "cpu"]
    return tmp_path, args


def scores(out):
    got = {}
    for p in sorted((out / "scores").glob("*.json")):
        r = json.loads(p.read_text())
        for k in TIMING:
            r.pop(k)
        r.pop("lo_run", None)  # the folder differs
        got[p.name] = r
    return got


def table_rows(out):  # the table has no timing column
    return [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]


def test_two_cpu_workers_match_the_sequential_runner(study):
    tmp_path, args = study
    assert main(args("seq")) == 0
    assert main(args("par") + ["--devices", "cpu,cpu"]) == 0
    seq, par = scores(tmp_path / "seq"), scores(tmp_path / "par")
    assert len(seq) == 5 and seq.keys() == par.keys()
    assert seq == par  # FID and every deterministic field, bitwise
    assert len(table_rows(tmp_path / "seq")) == 1 + 5 and table_rows(tmp_path / "seq") == table_rows(tmp_path / "par")
    assert (tmp_path / "par" / "results.png").exists()


def test_a_killed_worker_has_its_unit_run_again(study, monkeypatch):
    tmp_path, args = study
    assert main(args("seq") + ["--only", "small", "--only", "single"]) == 0
    monkeypatch.setenv(KILL_ENV, "small-s0")  # the worker exits (code 9) while training small-s0, once
    out = tmp_path / "par"
    assert main(args("par") + ["--devices", "cpu,cpu"]) == 0
    assert (out / ".test-killed-small-s0").exists()
    assert not (out / "runs" / "small-s0" / "metrics.jsonl").read_text().startswith("{}\n")  # trained again
    par = scores(out)
    assert sorted(par) == ["joint-s0__cascade.json", "joint-s0__diagonal.json", "joint-s0__dp-hi.json",
                           "single-s0__default.json", "small-s0__default.json"]
    seq = scores(tmp_path / "seq")
    assert par["small-s0__default.json"] == seq["small-s0__default.json"]
    assert par["single-s0__default.json"] == seq["single-s0__default.json"]


@pytest.mark.parametrize("flags, message", [
    (["--gpus", "0"], "--gpus 0: needs at least 1"),
    (["--gpus", "2", "--devices", "cpu,cpu"], "not both"),
    (["--devices", "cuda:0"], "CUDA is not available"),
    (["--devices", "cpu,,cpu"], "comma-separated"),
])
def test_bad_flags_are_one_line_errors(study, flags, message, capsys):
    if "cuda" in " ".join(flags) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    tmp_path, args = study
    assert main(args("out") + flags) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_budget_keeps_its_meaning(study):
    tmp_path, args = study
    assert main(args("out") + ["--devices", "cpu,cpu", "--budget-s", "1e-9"]) == 3  # no unit starts
    assert "Not scored yet" in (tmp_path / "out" / "results.md").read_text()
    assert not (tmp_path / "out" / "runs").exists()


def test_machine_left_reaches_the_workers(study):
    """--machine-left-s holds in every worker: with the machine's time spent, no worker starts a unit."""
    tmp_path, args = study
    assert main(args("out") + ["--devices", "cpu,cpu", "--machine-left-s", "1e-6"]) == 3
    assert not (tmp_path / "out" / "runs").exists()


def test_rates_from_reach_the_scheduler(study):
    """--rates-from judges the workers' units too: another folder whose trainings took 10^6 s of set-up says a unit
    cannot end within --machine-left-s 1000, so none starts (without it, a fresh folder has no estimate)."""
    import json

    tmp_path, args = study
    other = tmp_path / "other" / "scores"
    other.mkdir(parents=True)
    other.joinpath("single-s0__default.json").write_text(json.dumps(
        {"variant": "single", "seed": 0, "train_wall_seconds": 1e6, "train_seconds": 1.0, "train_steps": 2,
         "num_samples": 6, "nfe": 3, "sample_seconds": 1.0, "fid_seconds": 0.1}))
    code = main(args("out") + ["--devices", "cpu,cpu", "--machine-left-s", "1000", "--rates-from",
                               str(other.parent)])
    assert code == 3 and not (tmp_path / "out" / "runs").exists()


def test_only_the_cascade_variant_trains_its_lo_run_first(study):
    tmp_path, args = study
    assert main(args("par") + ["--devices", "cpu,cpu", "--only", "joint"]) == 0
    par = scores(tmp_path / "par")
    assert sorted(par) == ["joint-s0__cascade.json", "joint-s0__diagonal.json", "joint-s0__dp-hi.json"]
    assert (tmp_path / "par" / "runs" / "small-s0" / "summary.json").exists()
    assert main(args("seq") + ["--only", "joint"]) == 0
    assert scores(tmp_path / "seq") == par

"""`ditlab ablate`: a tiny two-variant ablation end to end on the CPU (stand-in FID network), resuming
without retraining, stopping on its time budget, and the shipped LIFT plan's configs."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ditlab.cli import main
from ditlab.configlib import ConfigError
from ditlab.experiments.ablation import AblationRunner, Invocation, check_variants
from ditlab.experiments.ablation_spec import load_ablation

from tests.eval.helpers import save_scripted


class SmallStandIn(torch.nn.Module):
    """An FID-network stand-in with 16 features: the Frechet distance of 2,048 would dominate the test."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.randn(3 * 4 * 4, 16, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.weight

TINY = """\
model: {arch: DiT-S/2, hidden_size: 32, depth: 1, num_heads: 2, num_classes: 0}
diffusion: {process: flow, prediction: velocity}
lift: {dp_grid: 2}
train: {batch_size: 4, device: cpu, log_every: 1, sample_every: 0, ckpt_every: 1000}
sample: {cfg_scale: 1.0}
"""

SPEC = """\
config: tiny.yaml
seeds: [0]
budget: {steps: 2}
sample: {num: 6, seed: 3, sampler: euler, steps: 3, batch_size: 4}
errors: {grid: 2, num: 4, batch_size: 4}
variants:
  single: {overrides: [task.kind=image], paths: [default], note: baseline}
  joint: {overrides: [task.kind=lift], paths: [diagonal, dp-hi]}
"""


def write_study(tmp_path, monkeypatch, spec: str, size: int):
    """A study folder: 12 random size x size images (data and FID reference), the tiny base config,
    the ablation file ``spec`` and the stand-in FID network; the FID cache inside tmp_path.
    Returns (data, net)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, images=rng.integers(0, 256, (12, size, size, 3), dtype=np.uint8))
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "ablation.yaml").write_text(spec)
    return data, save_scripted(SmallStandIn(), tmp_path / "standin.pt")


@pytest.fixture
def study(tmp_path, monkeypatch):
    data, net = write_study(tmp_path, monkeypatch, SPEC, 8)
    args = ["ablate", str(tmp_path / "ablation.yaml"), "--out", str(tmp_path / "out"), "--ref", str(data),
            "--inception", str(net), "--set", f"data.path={data}", "--data", str(data), "--device", "cpu"]
    return tmp_path, args


def test_runs_scores_and_resumes_without_retraining(study, monkeypatch):
    tmp_path, args = study
    out = tmp_path / "out"
    (out / "runs" / "single-s0").mkdir(parents=True)  # an interrupted run: no summary.json
    (out / "runs" / "single-s0" / "junk").write_text("x")
    assert main(args + ["--budget-s", "1e-9"]) == 3  # out of time before any work
    assert "Not scored yet" in (out / "results.md").read_text()

    assert main(args) == 0
    assert not (out / "runs" / "single-s0" / "junk").exists()  # the interrupted run was trained again
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["variant"], r["path"]) for r in rows] == [("single", "default"), ("joint", "diagonal"),
                                                           ("joint", "dp-hi")]
    assert all(float(r["fid"]) > 0 and r["train_steps"] == "2" for r in rows)
    assert rows[0]["nfe"] == rows[1]["nfe"] == "3"
    table = (out / "results.md").read_text()
    assert "| joint | dp-hi |" in table and "Not scored yet" not in table and (out / "results.png").exists()
    assert "Machine: cpu." in table  # each score records where it was trained and sampled
    # --set data.path says where the data lies, not what is trained: no recipe override to state
    assert all(json.loads(p.read_text())["command_overrides"] == [] for p in (out / "scores").glob("*.json"))
    assert "--set" not in table
    assert (out / "runs" / "joint-s0" / "lift_errors.png").exists()
    assert (out / "grids" / "joint-s0__dp-hi.png").exists()
    # each score names what its FID compared with; --report writes the same tables from the score files alone
    refs = {json.dumps(json.loads(p.read_text())["fid_ref"]) for p in (out / "scores").glob("*.json")}
    assert [json.loads(r) for r in refs] == [{"ref": args[args.index("--ref") + 1], "n_ref": 12,
                                             "inception": "standin.pt"}]
    (out / "results.md").unlink()
    assert main(["ablate", args[1], "--out", str(out), "--report"]) == 0  # (tests/experiments/test_report.py)
    assert (out / "results.md").read_text() == table  # the header's reference now from the score files

    # Again: nothing is trained or sampled, the same scores come back.
    import ditlab.train.trainer as trainer_module

    def no_training(*a, **k):
        raise AssertionError("a finished variant was trained again")

    monkeypatch.setattr(trainer_module.Trainer, "run", no_training)
    scores = {p.name: p.read_text() for p in (out / "scores").glob("*.json")}
    assert main(args) == 0
    assert {p.name: p.read_text() for p in (out / "scores").glob("*.json")} == scores

    # Same seeds, same samples: a rescored pair gives the same FID.
    (out / "scores" / "joint-s0__diagonal.json").unlink()
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(args + ["--only", "joint"]) == 0
    again = json.loads((out / "scores" / "joint-s0__diagonal.json").read_text())
    first = json.loads(scores["joint-s0__diagonal.json"])
    assert again["fid"] == pytest.approx(first["fid"], rel=1e-6)


def test_second_seed_keeps_the_first_and_averages(study):
    tmp_path, args = study
    out = tmp_path / "out"
    assert main(args + ["--only", "single"]) == 0
    assert main(args + ["--only", "single", "--seeds", "1"]) == 0
    assert (out / "runs" / "single-s1" / "summary.json").exists()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(r["seed"] for r in rows) == ["0", "1"]
    table = (out / "results.md").read_text()
    assert "training seeds [0, 1]" in table and " ± " in table


def test_bad_files_are_named(tmp_path):
    (tmp_path / "a.yaml").write_text("config: x.yaml\nvariants: {v: {overides: []}}\n")
    with pytest.raises(ConfigError, match="variants.v.overides"):
        load_ablation(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("config: x.yaml\nsample: {nm: 3}\nvariants: {v: {}}\n")
    with pytest.raises(ConfigError, match="sample.nm"):
        load_ablation(tmp_path / "b.yaml")
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "c.yaml").write_text("config: tiny.yaml\nvariants: {v: {overrides: [task.kind=image], "
                                     "paths: [diagonal]}}\n")
    with pytest.raises(ValueError, match="paths must be \\[default\\]"):
        check_variants(load_ablation(tmp_path / "c.yaml"), [])
    # the trainer's start-up checks run for every variant before any training
    (tmp_path / "d.yaml").write_text("config: tiny.yaml\nvariants: {ok: {overrides: [task.kind=lift]}, "
                                     "bad: {overrides: [task.kind=image, task.cond_injection=cross]}}\n")
    with pytest.raises(ValueError, match="variant bad: task.cond_injection='cross' applies to task.kind superres"):
        check_variants(load_ablation(tmp_path / "d.yaml"), [])
    assert AblationRunner  # imported for the CLI


def test_shipped_lift_plan_is_valid_and_flops_match():
    from ditlab.config import load_config
    from ditlab.flops import dit_forward_flops
    from ditlab.tasks.registry import build_model

    spec = load_ablation("configs/ablations/lift.yaml")
    check_variants(spec, ["data.path=unused"])
    names = [v.name for v in spec.variants]
    for needed in ("baseline", "baseline_flops", "lift", "lift_hi_only", "lift_diag_train", "lift_clean_lo",
                   "lift_mixture"):
        assert needed in names
    lift = next(v for v in spec.variants if v.name == "lift")
    assert {"diagonal", "dp-hi", "dp-total", "lo-random", "lo-fixed"} <= set(lift.paths)

    def flops(overrides):
        cfg = load_config(spec.config, overrides)
        model = build_model(cfg, {"image_size": 32, "channels": 3})
        return dit_forward_flops(model, groups=len(model.streams)), sum(p.numel() for p in model.parameters())

    by_name = {v.name: v.overrides for v in spec.variants}
    f_lift, p_lift = flops(by_name["lift"])
    f_base, p_base = flops(by_name["baseline"])
    f_flops, _ = flops(by_name["baseline_flops"])
    assert abs(p_base / p_lift - 1) < 0.02  # equal parameters
    assert abs(f_flops / f_lift - 1) < 0.03  # equal FLOPs


class FakeClock:
    """The runner's clock (ditlab.experiments.ablation's ``time``): every training takes ``train_s`` seconds."""

    def __init__(self, train_s: float):
        self.now, self.train_s = 0.0, train_s

    def monotonic(self) -> float:
        return self.now


def fake_clock(monkeypatch, train_s: float) -> FakeClock:
    import ditlab.experiments.ablation as ablation_module

    clock = FakeClock(train_s)
    real_train = AblationRunner.train

    def timed_train(self, unit, run_dir):
        real_train(self, unit, run_dir)
        clock.now += clock.train_s

    monkeypatch.setattr(ablation_module, "time", clock)
    monkeypatch.setattr(AblationRunner, "train", timed_train)
    return clock


def test_a_unit_trained_past_the_budget_is_still_scored(study, monkeypatch, capsys):
    """Its run lives on this machine only: stopping between its training and its scores would throw the training
    away when the machine goes back (the archive a study carries holds scores)."""
    tmp_path, args = study
    fake_clock(monkeypatch, train_s=100.0)
    capsys.readouterr()
    assert main(args + ["--budget-s", "50"]) == 3
    out = tmp_path / "out"
    assert (out / "scores" / "single-s0__default.json").exists()
    assert not (out / "runs" / "joint-s0").exists()  # 100 s in: past the budget, no new unit
    # the command says which unit it held back and why (it said only "--budget-s used up" after 138 s of a 470-s
    # budget, thirty-second session), then that there is work left
    printed = capsys.readouterr().out
    assert "ditlab ablate: joint-s0 not started: it should take ~" in printed
    assert "s and --budget-s has 0 s left; the next command starts it" in printed
    assert printed.rstrip().endswith("ditlab ablate: stopped with work left; run the same command again")


def test_a_unit_that_would_end_past_the_budget_does_not_start(study, monkeypatch):
    """The last unit's time is the next one's estimate: 100 s in with a 150 s budget, a unit that took 100 s
    is not started (the old rule, "start no new work after the budget", would have started it)."""
    tmp_path, args = study
    fake_clock(monkeypatch, train_s=100.0)
    assert main(args + ["--budget-s", "150"]) == 3
    out = tmp_path / "out"
    assert (out / "scores" / "single-s0__default.json").exists() and not (out / "runs" / "joint-s0").exists()
    assert main(args + ["--budget-s", "250"]) == 0  # a fresh invocation: its own clock, nothing to go by yet
    assert {p.name for p in (out / "scores").glob("*.json")} == {
        "single-s0__default.json", "joint-s0__diagonal.json", "joint-s0__dp-hi.json"}


def _time_the_single_unit(tmp_path, args, setup_s: float) -> None:
    """Score ``single`` and give its record the timings of a training with ``setup_s`` s of set-up and 1 s a sample."""
    assert main(args + ["--only", "single"]) == 0
    score = tmp_path / "out" / "scores" / "single-s0__default.json"
    record = json.loads(score.read_text())
    # no load measured (load_seconds 0): a run's loading and compilation are expected at SCORE_LOAD_S
    record.update(train_wall_seconds=setup_s, train_seconds=0.0, sample_seconds=6.0, fid_seconds=0.0, load_seconds=0.0)
    score.write_text(json.dumps(record))


def test_a_unit_longer_than_the_whole_budget_starts_first(study, monkeypatch):
    """A unit expected to outlast --budget-s itself (a 420-s run and its scores in slices of 490 s) would never
    start: it starts when it is an invocation's first work; once an invocation has worked, it waits."""
    tmp_path, args = study
    _time_the_single_unit(tmp_path, args, setup_s=500.0)  # joint: 500 s of set-up + 12 samples > 150 s
    runner = AblationRunner(load_ablation(tmp_path / "ablation.yaml"), tmp_path / "out", scorer=None,
                            device="cpu", budget_s=150.0)
    joint = next(u for u in runner.units if u.variant.name == "joint")
    need = runner.expected_unit_s(joint, tmp_path / "out" / "runs" / joint.name)
    assert need == pytest.approx(512) and runner._starts_anyway(need)
    runner.invocation.worked = True
    assert not runner._starts_anyway(need) and not runner._starts_anyway(100.0)
    # A later stage's runner has what is left of the command's budget: "longer than the budget" is the whole
    # command's (300 s would fit a fresh command: it waits for one), and a stage before it that worked counts.
    command = Invocation(budget_s=490.0)
    later = AblationRunner(load_ablation(tmp_path / "ablation.yaml"), tmp_path / "out", scorer=None, device="cpu",
                           budget_s=100.0, invocation=command)
    assert not later._starts_anyway(300.0) and later._starts_anyway(600.0)
    command.worked = True
    assert not later._starts_anyway(600.0)
    assert main(args + ["--budget-s", "150"]) == 0  # the restored single is skipped: joint is the first work
    assert (tmp_path / "out" / "scores" / "joint-s0__dp-hi.json").exists()


def test_no_unit_starts_that_would_outlast_the_machine(study, monkeypatch, capsys):
    """A unit longer than --budget-s goes on over several commands, but its run lives on the machine: with less
    --machine-left-s than its expected time it does not start (it would be trained for nothing: its scores come
    from one training); with enough left it starts as before."""
    tmp_path, args = study
    _time_the_single_unit(tmp_path, args, setup_s=500.0)  # joint: 500 s of set-up + 12 samples
    fake_clock(monkeypatch, train_s=0.0)
    capsys.readouterr()
    assert main(args + ["--budget-s", "150", "--machine-left-s", "400"]) == 3
    assert not (tmp_path / "out" / "runs" / "joint-s0").exists()
    assert "joint-s0 not started: it should take ~512 s and the machine has 400 s left" in capsys.readouterr().out
    # A unit too long for the machine does not stop the command: a shorter one after it may fit (single: 506 s).
    assert main(args + ["--budget-s", "150", "--machine-left-s", "510", "--seeds", "0", "1"]) == 3
    assert (tmp_path / "out" / "scores" / "single-s1__default.json").exists()
    assert not any((tmp_path / "out" / "runs" / f"joint-s{seed}").exists() for seed in (0, 1))
    assert main(args + ["--budget-s", "150", "--machine-left-s", "600"]) == 0
    assert (tmp_path / "out" / "scores" / "joint-s0__dp-hi.json").exists()


def test_no_score_starts_that_the_deadline_would_cut_off(study, monkeypatch, capsys):
    """--deadline-s (the timeout around a device call): a trained unit's next score, expected from the study's rate
    per sample plus loading its run, does not start when the command would be stopped first; the run stays and
    the next command scores it without training it again."""
    tmp_path, args = study
    _time_the_single_unit(tmp_path, args, setup_s=0.0)  # 1 s a sample: joint's scores ~6 s each, +30 s to load
    fake_clock(monkeypatch, train_s=100.0)
    capsys.readouterr()
    assert main(args + ["--deadline-s", "130"]) == 3  # trained by 100 s; 100 + 36 > 130
    out = capsys.readouterr().out
    assert "joint-s0 diagonal / default not started: it should take ~36 s and the command is stopped in 30 s" in out
    assert (tmp_path / "out" / "runs" / "joint-s0" / "summary.json").exists()
    assert not list((tmp_path / "out" / "scores").glob("joint-s0*"))
    # a fresh command: the first score (36 s) is longer than the whole deadline, and starts as its first work
    # (an estimate that never fits would stall the study); the second (6 s, its run loaded) fits
    assert main(args + ["--deadline-s", "20"]) == 0
    assert "is trained again" not in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "out" / "scores").glob("joint-s0*")} == {
        "joint-s0__diagonal.json", "joint-s0__dp-hi.json"}


def test_before_any_timed_score_the_deadline_judges_by_the_runs_training_speed(study, monkeypatch, capsys):
    """A fresh folder (a headline run) has no timed score to go by: the first score is priced from the run's own
    training (timings.training_prior) plus SCORE_LOAD_S for loading it, and a deadline too near holds it for the next
    command. Before, it started whatever the deadline, and the call's timeout cut it off (twenty-sixth session)."""
    tmp_path, args = study
    fake_clock(monkeypatch, train_s=100.0)
    capsys.readouterr()
    assert main(args + ["--only", "single", "--deadline-s", "120"]) == 3  # trained by 100 s; 30 s + passes > 20
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "runs" / "single-s0" / "summary.json").read_text())
    per_pass = summary["timed_seconds"] / (3 * summary["steps"] * 4)  # TINY's batch of 4
    need = 30.0 + 6 * 3 * per_pass  # SPEC: 6 samples, Euler 3 steps, unguided
    assert (f"single-s0 default / default not started: it should take ~{need:.0f} s and the command is stopped "
            "in 20 s") in out
    assert not list((tmp_path / "out" / "scores").glob("*.json"))
    assert main(args + ["--only", "single", "--deadline-s", "120"]) == 0  # the next command's first work
    assert "is trained again" not in capsys.readouterr().out


def test_machine_left_counts_from_the_command_start(monkeypatch):
    import ditlab.experiments.ablation as ablation_module

    clock = FakeClock(0.0)
    monkeypatch.setattr(ablation_module, "time", clock)
    command = Invocation(budget_s=490.0, machine_left_s=600.0)
    assert not command.machine_ends_before(600.0) and command.machine_ends_before(601.0)
    clock.now = 250.0  # an earlier stage of the same command worked for 250 s
    assert command.machine_left_now() == pytest.approx(350.0)
    assert not command.machine_ends_before(350.0) and command.machine_ends_before(351.0)
    clock.now = 700.0
    assert command.machine_left_now() > 0 and command.machine_ends_before(0.0)  # run out: never "no end"
    assert Invocation(budget_s=490.0).machine_left_now() == 0.0 and not Invocation().machine_ends_before(1e9)


def test_a_resumed_unit_is_expected_to_train_only_the_rest_of_its_time(tmp_path, monkeypatch):
    """A run stopped at a checkpoint after 60 of its 100 timed seconds is expected to need the other 40."""
    from ditlab.train.checkpoint import save_checkpoint

    write_study(tmp_path, monkeypatch, SPEC.replace("budget: {steps: 2}", "budget: {time_limit: 100}"), 8)
    runner = AblationRunner(load_ablation(tmp_path / "ablation.yaml"), tmp_path / "out", scorer=None,
                            device="cpu", budget_s=1000.0)
    unit = runner.units[0]
    run_dir = tmp_path / "out" / "runs" / unit.name
    assert runner.expected_unit_s(unit, run_dir) == pytest.approx(100)
    save_checkpoint(run_dir, 7, torch.nn.Linear(2, 2), state={"segments": [
        {"timed_seconds": 45.0}, {"timed_seconds": 15.0}, {"timed_seconds": None}]})
    assert runner.expected_unit_s(unit, run_dir) == pytest.approx(40)


def test_compile_on_samples_through_one_compiled_network_per_run(study, monkeypatch):
    """--compile on (the default on a GPU): each run is compiled once for all its paths, and its samples are the
    eager ones (the recorder's wrapper runs the same network: the scores agree to the bit)."""
    from tests.test_generation import Compiled

    import ditlab.experiments.ablation as ablation_module
    import ditlab.generation as generation_module

    tmp_path, args = study
    compiled, used = [], []

    def fake_compile(model, *a, **k):
        compiled.append(model)
        return Compiled(model)

    real_generate = generation_module.generate

    def recording_generate(task, model, *a, **k):
        used.append(type(model).__name__)
        return real_generate(task, model, *a, **k)

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(generation_module, "generate", recording_generate)
    assert main(args + ["--compile", "on", "--out", str(tmp_path / "on")]) == 0
    assert len(compiled) == 2 and used == ["Compiled"] * 3  # single: default; joint: diagonal, dp-hi
    assert main(args + ["--out", str(tmp_path / "auto")]) == 0  # auto on the CPU: eager
    assert len(compiled) == 2 and len(used) == 6 and "Compiled" not in used[3:]
    for name in ("single-s0__default.json", "joint-s0__diagonal.json", "joint-s0__dp-hi.json"):
        on, auto = (json.loads((tmp_path / d / "scores" / name).read_text())["fid"] for d in ("on", "auto"))
        assert on == auto


BROKEN = SPEC.replace("variants:\n", "variants:\n  broken: {overrides: [task.kind=image, model.route_fraction=0.5, "
                                    "'model.route_blocks=\"0:5\"']}\n")  # first: the others come after it


@pytest.mark.parametrize("workers", [[], ["--devices", "cpu,cpu"]], ids=["sequential", "parallel"])
def test_a_failing_unit_is_recorded_and_the_others_go_on(tmp_path, monkeypatch, capsys, workers):
    """A variant the network refuses (blocks 0:5 of a 1-block network) fails at its training: it is recorded with
    its error, the units after it are still trained and scored, results.md names it, the exit code is 1. The next
    invocation tries it again last (after the others), and once it works its record goes."""
    data, net = write_study(tmp_path, monkeypatch, BROKEN, 8)
    out = tmp_path / "out"
    args = ["ablate", str(tmp_path / "ablation.yaml"), "--out", str(out), "--ref", str(data), "--inception",
            str(net), "--set", f"data.path={data}", "--data", str(data), "--device", "cpu", *workers]
    if workers:
        args.remove("--device")
        args.remove("cpu")
    assert main(args) == 1
    record = json.loads((out / "failed" / "broken-s0.json").read_text())
    assert "route_blocks" in record["error"] and "Traceback" in record["traceback"]
    assert {p.name for p in (out / "scores").glob("*.json")} == {
        "single-s0__default.json", "joint-s0__diagonal.json", "joint-s0__dp-hi.json"}
    assert "Failed (" in (out / "results.md").read_text() and "broken-s0: " in (out / "results.md").read_text()
    assert "1 unit(s) failed: broken-s0" in capsys.readouterr().err
    assert main(["ablate", str(tmp_path / "ablation.yaml"), "--out", str(out), "--plan"]) == 0
    assert "; 1 failed (see" in capsys.readouterr().out

    # Fixed in the file: the next invocation trains it (last) and its record goes.
    (tmp_path / "ablation.yaml").write_text(BROKEN.replace('"0:5"', '"0:1"'))
    shutil.rmtree(out / "runs" / "broken-s0", ignore_errors=True)
    assert main(args) == 0
    assert not (out / "failed" / "broken-s0.json").exists() and (out / "scores" / "broken-s0__default.json").exists()
    assert "Failed (" not in (out / "results.md").read_text()


def test_units_that_failed_before_go_last(study, monkeypatch):
    import ditlab.experiments.ablation as ablation_module

    tmp_path, args = study
    out = tmp_path / "out"
    ablation_module.write_json_atomic(ablation_module.failure_path(out, "single-s0"),
                                      {"variant": "single", "seed": 0, "error": "RuntimeError: out of memory"})
    order = []
    real_train = AblationRunner.train

    def recording_train(self, unit, run_dir):
        order.append(unit.name)
        real_train(self, unit, run_dir)

    monkeypatch.setattr(AblationRunner, "train", recording_train)
    assert main(args) == 0
    assert order == ["joint-s0", "single-s0"] and not (out / "failed" / "single-s0.json").exists()


def test_the_first_unit_is_judged_by_the_studys_timed_scores(study, monkeypatch):
    """With no unit timed in this invocation, the estimate is the training limit (none here: a steps budget) plus
    the set-up and the samples (two scores of 6) at the rates of the study's timed scores."""
    tmp_path, args = study
    _time_the_single_unit(tmp_path, args, setup_s=50.0)

    runner = AblationRunner(load_ablation(tmp_path / "ablation.yaml"), tmp_path / "out", scorer=None,
                            device="cpu", budget_s=150.0)
    unit = next(u for u in runner.units if u.variant.name == "joint")
    assert runner.expected_unit_s(unit, tmp_path / "out" / "runs" / unit.name) == pytest.approx(50 + 2 * 6)


def test_a_network_this_machine_compiled_before_is_expected_to_set_up_in_seconds(study, monkeypatch):
    """With a warm set-up timed (a training that found its network in the compile cache), a unit whose network
    this machine has compiled (ditlab.train.compile_cache's marker) is expected at that set-up; one whose network it
    has not, or with compilation off, at a new network's."""
    from ditlab.train.compile_cache import mark_compiled, network_key

    tmp_path, args = study
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    _time_the_single_unit(tmp_path, args, setup_s=50.0)
    warm = json.loads((tmp_path / "out" / "scores" / "single-s0__default.json").read_text())
    warm.update(seed=1, train_wall_seconds=4.0, train_compile_cache="warm")
    (tmp_path / "out" / "scores" / "single-s1__default.json").write_text(json.dumps(warm))

    def expected(overrides):
        runner = AblationRunner(load_ablation(tmp_path / "ablation.yaml"), tmp_path / "out", scorer=None,
                                overrides=overrides, device="cpu", budget_s=150.0)
        unit = next(u for u in runner.units if u.variant.name == "joint")
        run_dir = tmp_path / "out" / "runs" / unit.name
        return runner, unit, run_dir, runner.expected_unit_s(unit, run_dir)

    runner, unit, run_dir, seconds = expected(["train.compile=true"])
    assert runner.rates["setup_warm_s"] == 4.0 and seconds == pytest.approx(50 + 2 * 6)  # not compiled here yet
    mark_compiled(network_key(runner.run_config(unit, run_dir)))
    assert expected(["train.compile=true"])[3] == pytest.approx(4 + 2 * 6)
    assert expected(["train.compile=false"])[3] == pytest.approx(50 + 2 * 6)

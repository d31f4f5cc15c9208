"""`ditlab ablate FILE --out DIR --report` (ditlab.experiments.report): the tables and plots written again from the
score files, with nothing trained, sampled or scored."""
import csv
import json

import ditlab.experiments.ablation as ablation_module
from ditlab.cli import main
from tests.experiments.test_ablation import write_study
from tests.experiments.test_ablation_stages import STAGES, _args


def refuse_running(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("--report trained, sampled or scored")

    monkeypatch.setattr(ablation_module.AblationRunner, "run", refuse)
    monkeypatch.setattr(ablation_module, "FidScorer", refuse)


def test_a_file_without_stages_is_reported_from_its_score_files(tmp_path, monkeypatch, capsys):
    refuse_running(monkeypatch)
    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "a.yaml").write_text("config: tiny.yaml\nseeds: [0, 1]\nvariants: {v: {}, w: {}}\n")
    (tmp_path / "out" / "scores").mkdir(parents=True)
    for variant, seed, fid in (("v", 0, 10.0), ("v", 1, 12.0), ("w", 0, 9.0)):
        record = {"variant": variant, "seed": seed, "path": "default", "eval": "", "fid": fid, "nfe": 49,
                  "train_steps": 300, "train_images": 76800, "params": 33e6, "gflops_per_image": 6.1, "note": "",
                  "fid_ref": {"ref": "ref.npz", "n_ref": 50000, "inception": "net.pt"}}
        (tmp_path / "out" / "scores" / f"{variant}-s{seed}__default.json").write_text(json.dumps(record))
    assert main(["ablate", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "out"), "--report"]) == 0
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| v | default | 11.00 ± 1.41 (10.0, 12.0) |" in table and "| w | default | 9.00 |" in table
    assert "FID-2000 against ref.npz (50000 images, net.pt)." in table and "Not scored yet: w/default" not in table
    assert [r["fid"] for r in csv.DictReader((tmp_path / "out" / "results.csv").open())] == ["10.0", "12.0", "9.0"]
    assert (tmp_path / "out" / "results.png").exists()
    assert f"ditlab ablate: wrote {tmp_path / 'out' / 'results.md'}" in capsys.readouterr().out


def test_every_stage_is_reported_as_the_runner_chose_its_variants(tmp_path, monkeypatch, capsys):
    """The final stage's variants follow from the screen's ranking, as when running; a stage after one that is not
    complete has no variants yet and is left out, with a line that says so; --stage reports that stage only."""
    data, net = write_study(tmp_path, monkeypatch, STAGES, 8)
    out = tmp_path / "out"
    assert main(_args(tmp_path, data, net)) == 0
    tables = {s: (out / s / "results.md").read_text() for s in ("screen", "final")}
    for s in tables:
        (out / s / "results.md").unlink()
    capsys.readouterr()
    refuse_running(monkeypatch)
    report = ["ablate", str(tmp_path / "ablation.yaml"), "--out", str(out), "--report"]
    assert main(report) == 0
    assert {s: (out / s / "results.md").read_text() for s in tables} == tables
    assert f"ditlab ablate: wrote {out / 'final' / 'results.md'}" in capsys.readouterr().out

    (out / "final" / "results.md").unlink()
    assert main(report + ["--stage", "screen"]) == 0
    assert not (out / "final" / "results.md").exists()
    next((out / "screen" / "scores").glob("*.json")).unlink()  # the screen is not complete any more
    assert main(report) == 0
    log = capsys.readouterr().out
    assert "--report stops at the first stage that is not complete" in log and "final/results" not in log

"""The icl task through the real trainer and CLI: exact resume mid-curriculum, `ditlab icl eval` end to end."""
import json
import shutil

import pytest
import torch

from ditlab.cli import main
from ditlab.config import load_config
from ditlab.train.checkpoint import find_latest_checkpoint, load_weights
from ditlab.train.trainer import Trainer

TINY = ["task.kind=icl", "icl.d=3", "icl.n_points=5", "icl.sigma=0.5", "icl.d_start=1", "icl.points_start=2",
        "icl.curriculum_every=2", "model.hidden_size=16", "model.depth=1", "model.num_heads=2",
        "diffusion.num_timesteps=50", "train.batch_size=8", "train.device=cpu", "train.log_every=1",
        "train.sample_every=0", "train.ckpt_every=3", "optim.lr=1e-3", "ema.decay=0.9"]


def losses(run_dir):
    return [json.loads(line)["loss"] for line in open(run_dir / "metrics.jsonl")]


@pytest.mark.parametrize("objective", ["diffusion", "mse"])
def test_resume_mid_curriculum_repeats_the_straight_run(tmp_path, objective):
    cfg = lambda run, steps: load_config(None, TINY + [f"icl.objective={objective}", f"train.run_dir={run}",
                                                       f"train.steps={steps}"])
    assert Trainer(cfg(tmp_path / "straight", 6), progress=False).run() == 0
    assert Trainer(cfg(tmp_path / "split", 3), progress=False).run() == 0
    torch.manual_seed(999)  # whatever happens in between must not matter
    resumed = Trainer(cfg(tmp_path / "split", 6), resume=True, progress=False)
    assert int(resumed.data.step) == 3  # the curriculum clock continues where the run stopped
    assert resumed.run() == 0
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")
    a, b = load_weights(tmp_path / "straight", "model"), load_weights(tmp_path / "split", "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_then_icl_eval_end_to_end(tmp_path, capsys):
    run, base = tmp_path / "run", tmp_path / "mse"
    assert main(["train", "configs/icl_small.yaml", *TINY, "train.steps=3", "train.compile=false",
                 "train.time_limit=0", f"train.run_dir={run}", "--no-progress"]) == 0
    assert main(["train", "configs/icl_small.yaml", *TINY, "train.steps=3", "train.compile=false",
                 "train.time_limit=0", "icl.objective=mse", f"train.run_dir={base}", "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["icl", "eval", str(run), "--baseline", str(base), "--prompts", "12", "--samples", "6",
                 "--steps", "4", "--bootstrap", "20", "--device", "cpu", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "sampling" in captured.err  # the progress bar (--no-progress: none)
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert set(printed["verdict"]) >= {"error_within_5pct_of_bayes", "coverage_within_3_points", "pass"}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["errors"]) == {"model", "bayes", "least_squares", "3nn", "averaging", "transformer_mse"}
    assert summary["precision"] == "fp32"  # the CPU has no autocast; a GPU runs bf16 unless --fp32
    assert len(summary["errors"]["bayes"]["mean"]) == 5 and len(summary["calibration"]["coverage_exact"]["0.9"]) == 5
    for name in ("summary.md", "error_vs_k.png", "coverage_vs_k.png"):
        assert (out / name).stat().st_size > 0
    # A run moved without its checkpoints (config.yaml, model.json and the EMA file: what travels
    # between machines) evaluates from --checkpoint to the same numbers.
    slim = tmp_path / "slim"
    slim.mkdir()
    for name in ("config.yaml", "model.json"):
        shutil.copy(run / name, slim / name)
    shutil.copy(find_latest_checkpoint(run) / "ema.safetensors", slim / "weights.safetensors")
    assert main(["icl", "eval", str(slim), "--checkpoint", str(slim / "weights.safetensors"), "--baseline", str(base),
                 "--prompts", "12", "--samples", "6", "--steps", "4", "--bootstrap", "20", "--device", "cpu",
                 "--out", str(tmp_path / "eval_slim")]) == 0
    slim_summary = json.loads((tmp_path / "eval_slim" / "summary.json").read_text())
    assert slim_summary["errors"]["model"]["mean"] == summary["errors"]["model"]["mean"]
    # --weights, as in `ditlab sample`: the raw model of a checkpoint folder; with a bare file it is an error
    assert main(["icl", "eval", str(run), "--weights", "model", "--prompts", "12", "--samples", "6", "--steps", "4",
                 "--bootstrap", "20", "--device", "cpu", "--out", str(tmp_path / "eval_raw")]) == 0
    raw_summary = json.loads((tmp_path / "eval_raw" / "summary.json").read_text())
    assert raw_summary["errors"]["model"]["mean"] != summary["errors"]["model"]["mean"]
    capsys.readouterr()
    assert main(["icl", "eval", str(slim), "--checkpoint", str(slim / "weights.safetensors"), "--weights", "model",
                 "--prompts", "4"]) == 1
    assert "--weights model picks the weights of a checkpoint folder" in capsys.readouterr().err
    assert main(["icl", "eval", str(slim), "--prompts", "4"]) == 1  # no checkpoint there, none named
    assert "no complete checkpoint" in capsys.readouterr().err
    # The baseline must be deterministic, and an image run is refused with a clear message.
    assert main(["icl", "eval", str(run), "--baseline", str(run), "--prompts", "4"]) == 1
    assert "icl.objective=mse" in capsys.readouterr().err

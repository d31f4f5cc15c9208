"""The scene task through the normal trainer and the CLI: exact resume, `ditlab train` + `ditlab scene eval`."""
import json

import numpy as np

import pytest
import torch

from ditlab.cli import main
from ditlab.config import load_config
from ditlab.train.checkpoint import load_weights
from ditlab.train.trainer import Trainer

TINY = ["scene.num_scenes=16", "scene.eval_scenes=3", "scene.objects=[1,3]", "scene.points_per_object=[8,24]",
        "scene.num_target_points=6", "scene.target_pool=12", "scene.fourier_bands=2", "model.hidden_size=32",
        "model.depth=2", "model.num_heads=4", "model.attn_dropout=0.1", "model.cross_attn_dropout=0.1",
        "train.batch_size=4", "train.log_every=1", "train.sample_every=0", "train.ckpt_every=3",
        "ema.decay=0.9", "sample.steps=2"]


def losses(run_dir):
    return [json.loads(line)["loss"] for line in open(run_dir / "metrics.jsonl")]


@pytest.mark.parametrize("process,prediction,frame", [("ddpm", "eps", "target"), ("flow", "velocity", "world")])
def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path, process, prediction, frame):
    """Random draws (time, noise, context dropout, target draws from the pool, attention dropout) all
    come from the checkpointed global RNG, and the scenes from scene.seed, so a split run is bitwise equal."""
    def cfg(run, steps):
        return load_config("configs/scene_small.yaml", TINY + [
            f"diffusion.process={process}", f"diffusion.prediction={prediction}", "task.cond_dropout=0.3",
            *(["diffusion.time_sampling=uniform"] if process == "ddpm" else []),  # the preset's is flow's
            f"scene.frame={frame}",
            f"train.run_dir={run}", f"train.steps={steps}"])

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert Trainer(cfg(straight, 6), progress=False).run() == 0
    assert Trainer(cfg(split, 3), progress=False).run() == 0
    torch.manual_seed(12345)  # whatever happens in between must not matter
    assert Trainer(cfg(split, 6), resume=True, progress=False).run() == 0
    assert losses(straight) == losses(split)
    for which in ("model", "ema"):
        a, b = load_weights(straight, which), load_weights(split, which)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_then_scene_eval_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("train.sample_every")]
    assert main(["train", "configs/scene_small.yaml", *overrides, f"train.run_dir={run}", "train.steps=3",
                 "train.sample_every=3", "sample.grid_size=2", "--no-progress"]) == 0
    assert (run / "samples" / "step_00000003.png").exists()  # the task's preview figure
    info = json.loads((run / "model.json").read_text())
    assert info["task"] == "scene" and info["num_target_points"] == 6
    capsys.readouterr()

    out = tmp_path / "eval"
    assert main(["scene", "eval", str(run), "--scenes", "3", "--steps", "2", "--sampler", "euler", "--cfg", "1.5",
                 "--figure-scenes", "2", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((out / "eval.json").read_text())
    assert report["scenes"] == 3 and report["cfg_scale"] == 1.5 and report["sampler"] == "euler"
    assert report["precision"] == "fp32"  # the CPU has no autocast; a GPU runs bf16 unless --fp32
    methods = {"model", "unconditional", "ground_truth", "scene_points", "target_box", "nearest_scene_point"}
    assert set(report["metrics"]) == methods and set(printed) == methods | {"out"}
    for m in report["metrics"].values():
        assert set(m) == {"distance", "distance_median", "precision", "coverage"}
        assert 0 <= m["precision"] <= 1 and 0 <= m["coverage"] <= 1 and m["distance"] >= 0
    assert report["metrics"]["ground_truth"]["distance"] < 1e-5
    assert (out / "scenes.png").stat().st_size > 0
    # `ditlab sample` on a scene run: generated points with their (held-out) scenes, and the metadata.
    assert main(["sample", str(run), "--num", "2", "--steps", "2", "--out", str(tmp_path / "pts.npz")]) == 0
    with np.load(tmp_path / "pts.npz") as z:
        assert z["points"].shape == (2, 6, 3) and z["scene_mask"].dtype == bool
        assert json.loads(str(z["ditlab_meta"]))["task"] == "scene"


"""End-to-end CPU training: resume equality, the loss falls, non-finite losses stop, signals save."""
import json
import os
import signal

import numpy as np
import pytest
import torch

from ditlab.config import load_config
from ditlab.train.checkpoint import find_latest_checkpoint, load_weights
from ditlab.train.trainer import EXIT_NONFINITE, NonFiniteLossError, Trainer


def tiny_cfg(data, run_dir, *extra):
    return load_config(None, [
        "model.arch=DiT-S/4", "model.hidden_size=32", "model.depth=2", "model.num_heads=2",
        "model.num_classes=4", "model.attn_dropout=0.1", f"data.path={data}", "train.batch_size=8",
        "train.device=cpu", "train.log_every=1", "train.sample_every=0", "train.ckpt_every=5",
        f"train.run_dir={run_dir}", "optim.lr=1e-3", "ema.decay=0.9", *extra])


def losses(run_dir):
    return [json.loads(line)["loss"] for line in open(os.path.join(run_dir, "metrics.jsonl"))]


@pytest.mark.parametrize("process", ["ddpm", "flow"])
def test_resume_repeats_the_uninterrupted_run_exactly(tiny_data, tmp_path, process):
    pred = "eps" if process == "ddpm" else "velocity"
    extra = [f"diffusion.process={process}", f"diffusion.prediction={pred}"]
    straight = tmp_path / "straight"
    assert Trainer(tiny_cfg(tiny_data, straight, "train.steps=10", *extra), progress=False).run() == 0

    split = tmp_path / "split"
    assert Trainer(tiny_cfg(tiny_data, split, "train.steps=5", *extra), progress=False).run() == 0
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    assert Trainer(tiny_cfg(tiny_data, split, "train.steps=10", *extra), resume=True, progress=False).run() == 0

    assert losses(straight) == losses(split)  # bitwise equal floats
    for which in ("model", "ema"):
        a, b = load_weights(straight, which), load_weights(split, which)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_needs_resume(tiny_data, tmp_path):
    Trainer(tiny_cfg(tiny_data, tmp_path / "r", "train.steps=5"), progress=False).run()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(tiny_cfg(tiny_data, tmp_path / "r", "train.steps=10"), progress=False)


def test_resume_with_changed_shape_is_an_error(tiny_data, tmp_path):
    Trainer(tiny_cfg(tiny_data, tmp_path / "r", "train.steps=5"), progress=False).run()
    with pytest.raises(ValueError, match="model.hidden_size"):
        Trainer(tiny_cfg(tiny_data, tmp_path / "r", "train.steps=10", "model.hidden_size=64"), resume=True,
                progress=False)


def test_loss_falls(tiny_data, tmp_path):
    run = tmp_path / "r"
    Trainer(tiny_cfg(tiny_data, run, "train.steps=80", "model.attn_dropout=0.0", "optim.lr=2e-3",
                     "diffusion.process=flow", "diffusion.prediction=velocity"), progress=False).run()
    values = losses(run)
    assert np.mean(values[-10:]) < 0.8 * np.mean(values[:10]), (values[:10], values[-10:])


def test_nonfinite_loss_stops_before_the_optimizer_step(tiny_data, tmp_path):
    trainer = Trainer(tiny_cfg(tiny_data, tmp_path / "r", "train.steps=10"), progress=False)
    trainer.train_step()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    ema_before = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    trainer.task.training_loss = lambda *a, **k: torch.full((8,), float("nan"), requires_grad=True)
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        trainer.train_step()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.equal(ema_before[k], v) for k, v in trainer.ema.module.state_dict().items())
    assert trainer.run() == EXIT_NONFINITE


def test_sigterm_saves_at_step_boundary_and_resumes(tiny_data, tmp_path):
    run = tmp_path / "r"
    trainer = Trainer(tiny_cfg(tiny_data, run, "train.steps=50", "train.ckpt_every=1000"), progress=False)
    original = trainer.train_step

    def step_then_signal():
        out = original()
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    trainer.train_step = step_then_signal
    assert trainer.run() == 128 + signal.SIGTERM
    assert find_latest_checkpoint(run).name == "step_00000003"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp files left
    resumed = Trainer(tiny_cfg(tiny_data, run, "train.steps=5", "train.ckpt_every=1000"), resume=True, progress=False)
    assert resumed.step == 3 and resumed.run() == 0


def _fused_cpu(trainer):
    """The sync-free guard relies on fused AdamW's found_inf; PyTorch also has a fused CPU AdamW."""
    trainer.optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=trainer.cfg.optim.lr, fused=True)
    trainer.sync_free = True
    return trainer


def test_sync_free_guard_freezes_weights_from_the_first_bad_step(tiny_data, tmp_path):
    ref = _fused_cpu(Trainer(tiny_cfg(tiny_data, tmp_path / "ref", "train.steps=2", "model.attn_dropout=0.0"),
                             progress=False))
    assert ref.run() == 0
    bad = _fused_cpu(Trainer(tiny_cfg(tiny_data, tmp_path / "bad", "train.steps=10", "train.log_every=5",
                                      "train.ckpt_every=100", "model.attn_dropout=0.0", "train.nan_check=log"),
                             progress=False))
    original = bad._loss_fn

    def nan_from_step_3(idx):
        loss = original(idx)
        return loss * float("nan") if bad.step >= 2 else loss

    bad._loss_fn = nan_from_step_3
    assert bad.run() == EXIT_NONFINITE
    assert bad.step == 5  # detected at the log step, without a sync per step
    assert int(bad._first_bad) == 3
    for a, b in zip(ref.model.parameters(), bad.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(ref.ema.module.parameters(), bad.ema.module.parameters()):
        assert torch.equal(a, b)
    assert not (tmp_path / "bad" / "checkpoints").exists() or find_latest_checkpoint(tmp_path / "bad") is None


def test_time_limit_stops_and_saves(tiny_data, tmp_path):
    run = tmp_path / "r"
    trainer = Trainer(tiny_cfg(tiny_data, run, "train.steps=100000", "train.time_limit=1.5", "train.untimed_steps=2",
                               "train.log_every=1000", "train.ckpt_every=100000"), progress=False)
    assert trainer.run() == 0
    summary = json.loads((run / "summary.json").read_text())
    assert 1.5 <= summary["timed_seconds"] < 10 and 0 < summary["steps"] < 100000
    assert summary["timed_steps"] == summary["steps"] - 2
    assert find_latest_checkpoint(run).name == f"step_{summary['steps']:08d}"


def test_a_resumed_time_limited_run_gets_the_rest_of_its_budget(tiny_data, tmp_path):
    """A run stopped by SIGTERM after ~1 s of its 2 s budget resumes with ~1 s left, not a new 2 s (the
    earlier segment's timed seconds are saved with the checkpoint and offset the clock)."""
    import time as time_module

    run = tmp_path / "r"
    limit = ["train.steps=100000", "train.time_limit=2", "train.untimed_steps=1", "train.log_every=1000",
             "train.ckpt_every=100000"]
    trainer = Trainer(tiny_cfg(tiny_data, run, *limit), progress=False)
    original = trainer.train_step

    def step_then_signal():
        out = original()
        if trainer.clock.start is not None and trainer.clock.used() >= 1.0:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    trainer.train_step = step_then_signal
    assert trainer.run() == 128 + signal.SIGTERM
    first = torch.load(find_latest_checkpoint(run) / "state.pt", weights_only=False)["segments"]
    assert 1.0 <= first[-1]["timed_seconds"] < 2.0
    resumed = Trainer(tiny_cfg(tiny_data, run, *limit), resume=True, progress=False)
    t0 = time_module.perf_counter()
    assert resumed.run() == 0
    second = time_module.perf_counter() - t0
    summary = json.loads((run / "summary.json").read_text())
    assert 2.0 <= summary["timed_seconds"] < 3.0  # the run's budget, both segments together
    assert second < 2.0 + 1.0  # well under a fresh 2 s budget plus its untimed step
    assert [seg["timed_seconds"] for seg in summary["segments"]][0] == first[-1]["timed_seconds"]
    # the steps behind those seconds are the run's too: each segment's after its own untimed step
    assert summary["timed_steps"] == summary["steps"] - 2
    assert summary["timed_images_per_s"] == pytest.approx(
        summary["timed_steps"] * summary["batch_size"] / summary["timed_seconds"])
    assert [seg["timed_steps"] for seg in summary["segments"]] == [
        seg["end_step"] - seg["start_step"] - 1 for seg in summary["segments"]]


def test_a_run_with_token_routing_trains(tiny_data, tmp_path):
    """model.route_fraction / model.route_blocks (ditlab.models.routing) from the config to the trained model."""
    from ditlab.models.routing import RouteSpec
    from ditlab.tasks.image.model import build_image_model

    cfg = load_config(None, ["model.route_fraction=0.5", "model.route_blocks=1:3", "model.depth=4"])
    assert build_image_model(cfg.model, 32).route == RouteSpec(0.5, 1, 3)
    run = tmp_path / "r"
    assert Trainer(tiny_cfg(tiny_data, run, "train.steps=4", "model.route_fraction=0.5", "model.route_blocks=0:1"),
                   progress=False).run() == 0
    assert len(losses(run)) == 4 and all(np.isfinite(losses(run)))

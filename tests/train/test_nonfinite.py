"""Issue 7, item 15: NaN or inf in the loss or in a gradient stops training before optimizer.step.

The error names the step and what was non-finite (loss or gradient norm); parameters, EMA and
optimizer state are what they were before that step; ``Trainer.run`` and ``ditlab train`` return
exit code 2 (README, "Exit codes of ditlab train") and the last checkpoint is untouched. Both
guards are covered: ``train.nan_check=step`` (a host check every step) and ``train.nan_check=log``
(the sync-free device flag; on the CPU with the fused CPU AdamW, as in tests/train/test_trainer.py).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ditlab.cli import main
from ditlab.config import load_config
from ditlab.train.checkpoint import find_latest_checkpoint, load_weights
from ditlab.train.trainer import EXIT_NONFINITE, NonFiniteLossError, Trainer

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"
TINY = ("model.hidden_size=32", "model.depth=1", "model.num_heads=2", "model.num_classes=4", "train.batch_size=8",
        "train.device=cpu", "train.log_every=1", "train.sample_every=0", "optim.warmup_steps=0", "ema.decay=0.9")
BAD_STEP = 3  # the first step whose loss or gradient is made non-finite
KINDS = [("loss", float("nan")), ("loss", float("inf")), ("gradient", float("nan")), ("gradient", float("inf"))]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8), labels=np.arange(32) % 4)
    return str(path)


def make_trainer(data, run_dir, *extra) -> Trainer:
    cfg = load_config(str(DEMO), [f"data.path={data}", f"train.run_dir={run_dir}", *TINY, *extra])
    return Trainer(cfg, progress=False)


def inject(trainer: Trainer, kind: str, value: float, at_step: int = BAD_STEP) -> None:
    """From optimizer step ``at_step`` (1-based) on, the loss or the first parameter's gradient is ``value``."""
    def bad_now() -> bool:
        return trainer.step + 1 >= at_step  # trainer.step counts the finished steps
    if kind == "loss":
        real = trainer._loss_fn
        trainer._loss_fn = lambda idx: real(idx) * value if bad_now() else real(idx)
    else:  # a finite loss whose backward produces a non-finite gradient
        param = next(trainer.model.parameters())
        param.register_hook(lambda g: torch.full_like(g, value) if bad_now() else g)


def count_optimizer_steps(trainer: Trainer) -> list[int]:
    """The step numbers for which optimizer.step ran."""
    calls, real = [], trainer.optimizer.step

    def step(*a, **k):
        calls.append(trainer.step + 1)
        return real(*a, **k)
    trainer.optimizer.step = step
    return calls


def snapshot(trainer: Trainer) -> dict:
    return {"model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "ema": {k: v.clone() for k, v in trainer.ema.module.state_dict().items()},
            "optimizer": copy.deepcopy(trainer.optimizer.state_dict()["state"])}


def assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    else:
        assert a == b, where


def what(kind: str) -> str:
    return "loss" if kind == "loss" else "gradient norm"


# ---- train.nan_check=step ------------------------------------------------------------------------
@pytest.mark.parametrize("kind,value", KINDS)
def test_nonfinite_stops_before_the_optimizer_step(data, tmp_path, kind, value):
    trainer = make_trainer(data, tmp_path / "r", "train.steps=10")
    calls = count_optimizer_steps(trainer)
    inject(trainer, kind, value)
    for _ in range(BAD_STEP - 1):
        trainer.train_step()
    before = snapshot(trainer)
    with pytest.raises(NonFiniteLossError, match=f"non-finite {what(kind)} at step {BAD_STEP}"):
        trainer.train_step()
    assert calls == list(range(1, BAD_STEP))  # no optimizer.step for the bad step
    assert trainer.step == BAD_STEP - 1
    assert_same(snapshot(trainer), before)  # parameters, EMA and optimizer moments untouched
    assert all(p.grad is None for p in trainer.model.parameters())  # no non-finite gradient kept


@pytest.mark.parametrize("kind,value", KINDS)
def test_run_exits_2_and_keeps_the_last_checkpoint(data, tmp_path, capsys, kind, value):
    run = tmp_path / "r"
    trainer = make_trainer(data, run, "train.steps=10", "train.ckpt_every=2")
    inject(trainer, kind, value)
    assert trainer.run() == EXIT_NONFINITE == 2
    assert f"ditlab: error: non-finite {what(kind)} at step {BAD_STEP}" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000002"]
    saved = load_weights(run, "model")
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2]  # nothing logged for the bad step


# ---- train.nan_check=log (sync-free) --------------------------------------------------------------
def fused_cpu(trainer: Trainer) -> Trainer:
    """The sync-free guard relies on fused AdamW's found_inf; PyTorch also has a fused CPU AdamW."""
    trainer.optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=trainer.cfg.optim.lr, fused=True)
    trainer.sync_free = True
    return trainer


@pytest.mark.parametrize("kind,value", [("gradient", float("nan")), ("gradient", float("inf")),
                                        ("loss", float("inf"))])
def test_sync_free_guard_holds_from_the_bad_step(data, tmp_path, capsys, kind, value):
    ref = fused_cpu(make_trainer(data, tmp_path / "ref", f"train.steps={BAD_STEP - 1}", "train.ckpt_every=100"))
    assert ref.run() == 0
    bad = fused_cpu(make_trainer(data, tmp_path / "bad", "train.steps=10", "train.ckpt_every=100",
                                 "train.log_every=5", "train.nan_check=log"))
    inject(bad, kind, value)
    assert bad.run() == EXIT_NONFINITE
    assert f"at step {BAD_STEP}; no optimizer or EMA update" in capsys.readouterr().out
    assert int(bad._first_bad) == BAD_STEP and bad.step == 5  # found at the log step, no per-step sync
    for a, b in zip(ref.model.parameters(), bad.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(ref.ema.module.parameters(), bad.ema.module.parameters()):
        assert torch.equal(a, b)
    assert find_latest_checkpoint(tmp_path / "bad") is None  # nothing saved past the bad step


# ---- the command line ------------------------------------------------------------------------------
def test_cli_exit_code_2_on_a_diverging_run(data, tmp_path, capsys):
    """A real divergence, no injection: lr 1e30 without clipping overflows the weights after step 1."""
    code = main(["train", str(DEMO), f"data.path={data}", f"train.run_dir={tmp_path / 'r'}", *TINY,
                 "train.steps=10", "train.ckpt_every=1", "optim.lr=1e30", "optim.grad_clip=0", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 2, out
    assert "ditlab: error: non-finite" in out and "stopped before the optimizer step" in out
    bad_step = int(out.split(" at step ")[1].split()[0])
    assert find_latest_checkpoint(tmp_path / "r").name == f"step_{bad_step - 1:08d}"

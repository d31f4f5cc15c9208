"""Issue 7, items 28 and 29: signals sent to the real command line, in a subprocess.

28. SIGTERM / SIGINT while `ditlab train` runs: a checkpoint at the step boundary (the step the
    metrics reached, the optimizer's own step count), exit code 143 / 130 (README, "Exit codes of
    ditlab train"), no temporary files left, and `--resume` continues from the saved step.
29. Ctrl-C (SIGINT) while `ditlab sample` runs: exit code 130, "interrupted after N of M samples;
    nothing was written" with N the finished samples, and no output or partial file.

Each test polls the child's output for progress before it signals, so the signal lands mid-run.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ditlab.config import load_config
from ditlab.train.checkpoint import find_latest_checkpoint
from ditlab.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
TINY = ("model.hidden_size=32", "model.depth=1", "model.num_heads=2", "model.num_classes=2", "train.batch_size=8",
        "train.device=cpu", "train.sample_every=0")
TIMEOUT = 90  # seconds for any one wait; a healthy run needs a few


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(path, images=rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8), labels=np.arange(32) % 2)
    return str(path)


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_ditlab(args: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    """`python -m ditlab ARGS` with stdout and stderr in ``log`` (a file: no pipe to fill up)."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    # A child of a process that ignores SIGINT (a background job) inherits that: undo it, so Python
    # turns SIGINT into KeyboardInterrupt as it does in a terminal.
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "ditlab", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd,
                                preexec_fn=_default_sigint if ignored else None)  # noqa: PLW1509 - rare, no threads yet


def wait_until(condition, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"ditlab exited ({proc.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"no {what} within {TIMEOUT} s:\n{log.read_text()}")
        time.sleep(0.05)


def finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def temporary_files(folder: Path) -> list[str]:
    """Names the writers use while writing: .tmp-step_*, .latest.tmp-*, .old-step_*, .NAME.tmp-*."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*")
                  if "tmp" in p.name or p.name.startswith(".old"))


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [int(m) for m in re.findall(r'"step": (\d+)', path.read_text())] if path.exists() else []


# ---- item 28 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_training_saves_exits_and_resumes(data, tmp_path, sig):
    run, log = tmp_path / "run", tmp_path / "train.log"
    args = ["train", str(DEMO), f"data.path={data}", f"train.run_dir={run}", *TINY, "train.log_every=1",
            "train.ckpt_every=100000", "--no-progress"]
    proc = start_ditlab([*args, "train.steps=100000"], log, tmp_path)
    wait_until(lambda: len(logged_steps(run)) >= 3, proc, log, "3 logged steps")
    os.kill(proc.pid, sig)
    code = finish(proc)
    out = log.read_text()
    assert code == 128 + sig, out  # 143 for SIGTERM, 130 for SIGINT
    assert f"received {signal.Signals(sig).name}" in out and "resume with --resume" in out
    step = int(re.search(r"stopped at step (\d+)", out).group(1))
    assert find_latest_checkpoint(run).name == f"step_{step:08d}"
    assert logged_steps(run)[-1] == step  # the checkpoint is of the last finished step
    state = torch.load(run / "checkpoints" / f"step_{step:08d}" / "state.pt", weights_only=True)
    assert state["step"] == step
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {step}  # exactly `step` updates
    assert temporary_files(run) == []

    proc = start_ditlab([*args, f"train.steps={step + 2}", "--resume"], log, tmp_path)
    assert finish(proc) == 0, log.read_text()
    out = log.read_text()
    assert f"from step_{step:08d} (step {step})" in out and f"finished at step {step + 2}" in out
    assert logged_steps(run) == list(range(1, step + 3))  # continued, nothing repeated or lost
    assert find_latest_checkpoint(run).name == f"step_{step + 2:08d}"
    assert temporary_files(run) == []


# ---- item 29 ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sample") / "run"
    cfg = load_config(str(DEMO), [f"data.path={data}", f"train.run_dir={run}", *TINY, "train.steps=2",
                                  "train.log_every=1", "train.ckpt_every=2"])
    assert Trainer(cfg, progress=False).run() == 0
    return run


def test_ctrl_c_while_sampling_writes_nothing_and_counts(trained_run, tmp_path):
    out_dir, log = tmp_path / "out", tmp_path / "sample.log"
    out_dir.mkdir()
    total, batch = 2000, 4  # ~25 s of sampling: far more than finishes before the signal
    proc = start_ditlab(["sample", str(trained_run), "--num", str(total), "--batch-size", str(batch), "--steps", "50",
                         "--sampler", "euler", "--device", "cpu", "--compile", "off",
                         "--out", str(out_dir / "s.npz"), "--grid", str(out_dir / "g.png")], log, tmp_path)
    progress = re.compile(r"sampling:.*?\b([1-9]\d*)/(\d+)")
    wait_until(lambda: progress.search(log.read_text()), proc, log, "a finished sampling batch")
    os.kill(proc.pid, signal.SIGINT)
    code = finish(proc)
    text = log.read_text()
    assert code == 130, text
    done = re.search(r"interrupted after (\d+) of (\d+) samples; nothing was written", text)
    assert done, text
    finished, asked = int(done.group(1)), int(done.group(2))
    batches_seen = max(int(m.group(1)) for m in progress.finditer(text))
    assert asked == total and finished % batch == 0 and batch * batches_seen <= finished < total
    assert "Traceback" not in text
    assert sorted(p.name for p in out_dir.iterdir()) == []  # no npz, no grid, no temporary file
    assert temporary_files(tmp_path) == []


def test_second_signal_during_the_save_is_ignored(data, tmp_path, monkeypatch):
    """stop.py: a second Ctrl-C while the checkpoint is written must not interrupt the write."""
    from ditlab.train import checkpoint as ckpt

    run = tmp_path / "run"
    cfg = load_config(str(DEMO), [f"data.path={data}", f"train.run_dir={run}", *TINY, "train.steps=50",
                                  "train.log_every=1", "train.ckpt_every=100000"])
    trainer = Trainer(cfg, progress=False)
    real_step, real_save_file = trainer.train_step, ckpt.save_file

    def step_then_ctrl_c():
        out = real_step()
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    def save_file_interrupted(*a, **k):  # the second Ctrl-C arrives in the middle of the save
        os.kill(os.getpid(), signal.SIGINT)
        return real_save_file(*a, **k)

    trainer.train_step = step_then_ctrl_c
    monkeypatch.setattr(ckpt, "save_file", save_file_interrupted)
    assert trainer.run() == 128 + signal.SIGINT
    assert find_latest_checkpoint(run).name == "step_00000003"
    assert temporary_files(run) == []

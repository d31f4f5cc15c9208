"""Issue 7, items 1-9: resume and checkpoint faults.

1. Bitwise resume: 10 steps straight vs 5 + save + a fresh process (`ditlab train --resume`) + 5, with
   attention and label dropout on: equal losses, model, EMA, optimizer state, data position and RNG.
2. Negative controls: a resume that leaves out the RNG, the optimizer or the EMA state is caught by
   the comparison of item 1; EMA is checked on its own (leaving it out changes nothing else). A
   checkpoint saved without the optimizer or the EMA is a clear error at resume time.
3. Mid-epoch resume: the data order (ditlab.train.data_order.EpochSampler) across a save/load in the
   middle of an epoch. There are no loader workers to vary (the "0 and 2 workers" of the issue): the
   trainer keeps the whole data set on the device and gathers each batch by index, so the sampler
   position is the only data state there is.
4. Checkpoint schema and format version; a missing key raises, naming the file and the key.
5. Crash during save: a writer that raises halfway through a file, and a saver killed with SIGKILL
   while it writes: the previous checkpoint loads and ``latest`` never names a partial folder.
6. Disk full: ENOSPC from safetensors or from the state file, torch.save's RuntimeError variant, and
   a full disk while ``latest`` is written: temporary files removed, older checkpoints kept, a
   message that says the disk is full.
7. Truncated checkpoint: resume falls back to the newest valid one and warns which were skipped.
8. Resume with a changed config: shape changes are an error listing the keys; lr or steps warn.
9. A GPU checkpoint loads on the CPU: state.pt whose tensors claim a CUDA device (the storage
   location tag is forced to "cuda:0", so no GPU is needed to write one) loads with
   ``weights_only=True`` and ``map_location``; a GPU-shaped optimizer (fused AdamW, tensor lr)
   resumes on the CPU. The check with a real GPU is ``checkpoint_gpu_to_cpu`` in
   scripts/reliability_gpu.py.
"""
from __future__ import annotations

import errno
import inspect
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.serialization
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ditlab.config import load_config
from ditlab.train import checkpoint as ckpt
from ditlab.train import trainer as trainer_mod
from ditlab.train.checkpoint import (
    CheckpointError,
    find_latest_checkpoint,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
)
from ditlab.train.data_order import EpochSampler
from ditlab.train.ema import EMA
from ditlab.train.trainer import Trainer

from tests.script_modules import load_script

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"
# A tiny model on 64 images of 16x16: 8 batches per epoch, a checkpoint every 5 steps, dropout on.
TINY = ("model.hidden_size=32", "model.depth=2", "model.num_heads=2", "model.num_classes=4",
        "model.attn_dropout=0.1", "model.label_dropout=0.1", "train.batch_size=8", "train.device=cpu",
        "train.log_every=1", "train.sample_every=0", "train.ckpt_every=5", "optim.warmup_steps=0",
        "ema.decay=0.9")


# ---- helpers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tiny_data) -> str:
    """The 64 colour-class images of tests/train/conftest.py."""
    return tiny_data


def overrides(data: str, run_dir: Path, steps: int, *extra: str) -> list[str]:
    return [f"data.path={data}", f"train.run_dir={run_dir}", f"train.steps={steps}", *TINY, *extra]


def make_trainer(data, run_dir, steps, *extra, resume=False) -> Trainer:
    return Trainer(load_config(str(DEMO), overrides(data, run_dir, steps, *extra)), resume=resume, progress=False)


def train(data, run_dir, steps, *extra, resume=False) -> Trainer:
    trainer = make_trainer(data, run_dir, steps, *extra, resume=resume)
    assert trainer.run() == 0
    return trainer


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    """The uninterrupted reference: 10 steps, checkpoints at 5 and 10."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(data, run, 10)
    return run


@pytest.fixture(scope="module")
def first_half(data, tmp_path_factory) -> Path:
    """5 steps of the same run; tests copy it before resuming (resuming writes into the folder)."""
    run = tmp_path_factory.mktemp("half") / "run"
    train(data, run, 5)
    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def ditlab_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO / "src"))


def hidden_files(run_dir: Path) -> list[str]:
    """Temp and leftover names (.tmp-step_*, .latest.tmp-*, .old-step_*, safetensors' .tmp*)."""
    return sorted(str(p.relative_to(run_dir)) for p in Path(run_dir).rglob(".*"))


def logged_losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def record(run_dir: Path) -> dict:
    """Everything item 1 compares, from the run's metrics and its latest checkpoint."""
    folder = find_latest_checkpoint(run_dir)
    state = torch.load(folder / "state.pt", weights_only=True)
    return {"losses": logged_losses(run_dir), "model": load_weights(folder, "model"),
            "ema": load_weights(folder, "ema"), "optimizer": state["optimizer"], "data": state["data"],
            "rng": state["rng"], "step": state["step"]}


def same(a, b) -> bool:
    """Bitwise equality of nested tensors / numbers / strings / lists / dicts."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b)))
    return type(a) is type(b) and a == b


def differing(a: dict, b: dict) -> set[str]:
    return {k for k in a if not same(a[k], b[k])}


# ---- item 1 -------------------------------------------------------------------------------------
def test_bitwise_resume_in_a_fresh_process(data, straight, first_half, tmp_path):
    split = copy_run(first_half, tmp_path / "split")
    cmd = [sys.executable, "-m", "ditlab", "train", str(DEMO), *overrides(data, split, 10), "--resume", "--no-progress"]
    proc = subprocess.run(cmd, env=ditlab_env(), cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "from step_00000005 (step 5)" in proc.stdout, proc.stdout
    ref, got = record(straight), record(split)
    assert len(ref["losses"]) == 10 and ref["step"] == 10
    assert not same(ref["ema"], ref["model"])  # the EMA comparison is not the model one twice
    assert differing(ref, got) == set()


# ---- item 2 -------------------------------------------------------------------------------------
def leave_out_on_resume(monkeypatch, part: str) -> None:
    """Make the resuming trainer skip restoring one part of the checkpoint."""
    if part == "rng":
        monkeypatch.setattr(Trainer, "_restore_rng", lambda self, state: None)
        return
    real = trainer_mod.load_checkpoint
    monkeypatch.setattr(trainer_mod, "load_checkpoint", lambda *a, **k: real(*a, **{**k, part: None}))


@pytest.mark.parametrize("part,must_differ,exactly", [
    ("rng", {"losses", "model", "ema", "optimizer", "rng"}, False),
    ("optimizer", {"losses", "model", "optimizer"}, False),
    ("ema", {"ema"}, True),  # EMA on its own: nothing else notices it is missing
])
def test_resume_without_a_part_fails_the_comparison(data, straight, first_half, tmp_path, monkeypatch,
                                                    part, must_differ, exactly):
    split = copy_run(first_half, tmp_path / "split")
    leave_out_on_resume(monkeypatch, part)
    train(data, split, 10, resume=True)
    diff = differing(record(straight), record(split))
    assert diff == must_differ if exactly else must_differ <= diff, diff


@pytest.mark.parametrize("part,message", [("optimizer", "no optimizer state"), ("ema", "no ema.safetensors")])
def test_checkpoint_saved_without_a_part_cannot_be_resumed_silently(data, tmp_path, monkeypatch, part, message):
    real = trainer_mod.save_checkpoint

    def save_without(*args, **kwargs):  # Trainer.save passes optimizer and ema positionally
        bound = inspect.signature(real).bind(*args, **kwargs)
        bound.arguments[part] = None
        return real(*bound.args, **bound.kwargs)
    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_without)
    train(data, tmp_path / "r", 5)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=message):
        make_trainer(data, tmp_path / "r", 10, resume=True)


# ---- item 3 -------------------------------------------------------------------------------------
def draw(sampler: EpochSampler, n: int) -> list[list[int]]:
    return [sampler.next_indices().tolist() for _ in range(n)]


@pytest.mark.parametrize("num,batch,stop_at", [
    (64, 8, 5),   # mid-epoch
    (64, 8, 8),   # exactly at an epoch boundary
    (64, 8, 11),  # mid-epoch of the second epoch
    (30, 8, 4),   # 3 batches per epoch, a 6-example tail dropped: just after the first wrap
    (30, 8, 2),   # before the dropped tail
])
def test_epoch_sampler_resumes_mid_epoch_through_a_checkpoint(tmp_path, num, batch, stop_at):
    per_epoch, epochs = num // batch, 4
    total = per_epoch * epochs
    expected = draw(EpochSampler(num, batch, seed=3), total)

    first = EpochSampler(num, batch, seed=3)
    got = draw(first, stop_at)
    save_checkpoint(tmp_path, stop_at, nn.Linear(1, 1), state={"data": first.state_dict()})
    resumed = EpochSampler(num, batch, seed=3)  # a new object: nothing survives but the checkpoint
    resumed.load_state_dict(load_checkpoint(tmp_path)["data"])
    assert resumed.state_dict() == first.state_dict()
    got += draw(resumed, total - stop_at)

    assert got == expected
    for e in range(epochs):  # no repeats, no skips beyond the documented dropped tail
        seen = [i for b in got[e * per_epoch:(e + 1) * per_epoch] for i in b]
        assert len(set(seen)) == len(seen) == per_epoch * batch, f"epoch {e}"
        if num % batch == 0:
            assert sorted(seen) == list(range(num)), f"epoch {e}"


def test_epoch_sampler_refuses_another_data_set_size():
    state = EpochSampler(64, 8, seed=0).state_dict()
    with pytest.raises(ValueError, match="64 examples.*this one has 60"):
        EpochSampler(60, 8, seed=0).load_state_dict(state)


def record_indices(trainer: Trainer, seen: list) -> None:
    real = trainer.order.next_indices

    def spy():
        idx = real()
        seen.append(idx.tolist())
        return idx
    trainer.order.next_indices = spy


def test_trainer_resumed_mid_epoch_sees_the_same_batches(data, tmp_path):
    """20 steps = 2.5 epochs of 8 batches; the split run stops at step 5 (mid-epoch 0)."""
    straight_seen, split_seen = [], []
    ref = make_trainer(data, tmp_path / "a", 20, "model.depth=1")
    record_indices(ref, straight_seen)
    assert ref.run() == 0
    first = make_trainer(data, tmp_path / "b", 5, "model.depth=1")
    record_indices(first, split_seen)
    assert first.run() == 0
    resumed = make_trainer(data, tmp_path / "b", 20, "model.depth=1", resume=True)
    assert resumed.order.state_dict() == {"epoch": 0, "offset": 40, "num_examples": 64}
    record_indices(resumed, split_seen)
    assert resumed.run() == 0
    assert split_seen == straight_seen and len(straight_seen) == 20


# ---- item 4 -------------------------------------------------------------------------------------
def test_training_checkpoint_schema(straight):
    folder = straight / "checkpoints" / "step_00000010"
    assert sorted(p.name for p in folder.iterdir()) == ["ema.safetensors", "model.safetensors", "state.pt"]
    state = torch.load(folder / "state.pt", weights_only=True)
    assert set(state) == {"format_version", "step", "has_ema", "rng", "optimizer", "data", "config", "segments"}
    assert state["config"]["ema"]["sigma_rel"] == 0.0  # the kind of the run's EMA: exponential (ema.decay)
    # the training segments behind this step (summary.json and `ditlab report` sum them over resumes)
    assert [(s["start_step"], s["end_step"], s["batch_size"]) for s in state["segments"]] == [(0, 10, 8)]
    assert state["segments"][0]["wall_seconds"] > 0
    assert state["format_version"] == ckpt.CHECKPOINT_FORMAT_VERSION and state["step"] == 10 and state["has_ema"]
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert set(state["data"]) == {"epoch", "offset", "num_examples"}
    assert set(state["optimizer"]) == {"state", "param_groups"}
    assert state["config"]["model"]["hidden_size"] == 32
    from safetensors import safe_open
    for name in ("model.safetensors", "ema.safetensors"):
        with safe_open(str(folder / name), framework="pt") as f:
            assert f.metadata() == {"format_version": str(ckpt.CHECKPOINT_FORMAT_VERSION), "step": "10"}


def rewrite_state(folder: Path, edit) -> None:
    state = torch.load(folder / "state.pt", weights_only=True)
    torch.save(edit(state), folder / "state.pt")


@pytest.mark.parametrize("edit,message", [
    (lambda s: {**s, "format_version": ckpt.CHECKPOINT_FORMAT_VERSION + 1}, "format_version 2, newer than"),
    (lambda s: {k: v for k, v in s.items() if k != "step"}, "missing required key 'step'"),
    (lambda s: {k: v for k, v in s.items() if k != "format_version"}, "missing required key 'format_version'"),
    (lambda s: [s], "holds a list, not a checkpoint state dict"),
])
def test_bad_schema_is_refused_naming_the_file(tmp_path, edit, message):
    folder = save_checkpoint(tmp_path, 1, nn.Linear(2, 2))
    rewrite_state(folder, edit)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(folder)
    assert str(folder / "state.pt") in str(err.value)


def test_missing_weight_file_is_refused_naming_it(tmp_path):
    folder = save_checkpoint(tmp_path, 1, nn.Linear(2, 2), ema=nn.Linear(2, 2))
    (folder / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="ema.safetensors does not exist"):
        load_weights(folder, "ema")
    with pytest.raises(CheckpointError, match="(?s)no valid checkpoint.*ema.safetensors is missing"):
        find_latest_checkpoint(tmp_path)


@pytest.mark.parametrize("key", ["data", "rng"])
def test_resume_from_a_state_missing_a_trainer_key_names_file_and_key(data, first_half, tmp_path, key):
    run = copy_run(first_half, tmp_path / "run")
    folder = run / "checkpoints" / "step_00000005"
    rewrite_state(folder, lambda s: {k: v for k, v in s.items() if k != key})
    with pytest.raises(CheckpointError, match=f"state.pt has no key '{key}'") as err:
        make_trainer(data, run, 10, resume=True)
    assert str(folder / "state.pt") in str(err.value)


# ---- item 5 -------------------------------------------------------------------------------------
def assert_latest_complete(run_dir: Path) -> str:
    """``latest`` names a folder that passes the completeness check; returns the name."""
    root = Path(run_dir) / "checkpoints"
    name = (root / "latest").read_text().strip()
    assert ckpt._validate(root / name) is None, f"latest names an incomplete folder {name}"
    return name


def assert_previous_survives(run_dir: Path, previous: nn.Module, name="step_00000010") -> None:
    assert assert_latest_complete(run_dir) == name
    assert find_latest_checkpoint(run_dir).name == name
    fresh = nn.Linear(4, 4)
    load_checkpoint(run_dir, fresh)
    assert same(fresh.state_dict(), previous.state_dict())


def half_safetensors_then_raise(run_dir, error):
    """A save_file that writes half a real file, checks ``latest`` meanwhile, then raises."""
    def save_file(tensors, filename, metadata=None):
        blob = safetensors_bytes(tensors, metadata=metadata)
        Path(filename).write_bytes(blob[: len(blob) // 2])
        assert_latest_complete(run_dir)
        raise error
    return save_file


def half_torch_save_then_raise(run_dir, error, real=torch.save):
    """torch.save that writes half of the real bytes into the state file, then raises."""
    def save(obj, f, *a, **k):
        if isinstance(f, io.BytesIO):  # save_checkpoint's in-memory pre-check: let it pass
            return real(obj, f, *a, **k)
        buf = io.BytesIO()
        real(obj, buf, *a, **k)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        assert_latest_complete(run_dir)
        raise error
    return save


@pytest.mark.parametrize("where", ["model.safetensors", "state.pt"])
def test_writer_raising_halfway_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    torch.manual_seed(0)
    previous = nn.Linear(4, 4)
    save_checkpoint(tmp_path, 10, previous)
    if where == "model.safetensors":
        monkeypatch.setattr(ckpt, "save_file", half_safetensors_then_raise(tmp_path, ValueError("writer died")))
    else:
        monkeypatch.setattr(ckpt.torch, "save", half_torch_save_then_raise(tmp_path, ValueError("writer died")))
    for step in (20, 10):  # a new step, and the same step again (the old copy must survive)
        with pytest.raises(CheckpointError, match=f"step_000000{step}.*writer died.*kept"):
            save_checkpoint(tmp_path, step, nn.Linear(4, 4))
    monkeypatch.undo()
    assert hidden_files(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000010"]
    assert_previous_survives(tmp_path, previous)


KILLED_SAVER = r"""
import os, sys, time
import torch
from ditlab.train import checkpoint as ckpt

run_dir, where, marker, step = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def pause():  # tell the test where we are, then wait for SIGKILL
    open(marker, "w").close()
    time.sleep(120)
    os._exit(5)

real_save_file, real_torch_save, real_replace = ckpt.save_file, torch.save, os.replace

def save_file(tensors, filename, metadata=None):
    real_save_file(tensors, filename, metadata=metadata)
    if where == "model":
        with open(filename, "r+b") as f:  # leave half a file behind, as a kill mid-write does
            f.truncate(os.path.getsize(filename) // 2)
        pause()

def torch_save(obj, f, *a, **k):
    real_torch_save(obj, f, *a, **k)
    if where == "state" and hasattr(f, "fileno"):
        f.flush()
        f.truncate(f.tell() // 2)
        pause()

def replace(src, dst):
    name = os.path.basename(str(src))
    if (where == "publish" and name.startswith(".latest.tmp")) or (where == "swap" and name.startswith(".tmp-step")):
        pause()  # "swap": the old copy of this step is already moved aside
    return real_replace(src, dst)

ckpt.save_file, torch.save, os.replace = save_file, torch_save, replace
torch.manual_seed(2)
ckpt.save_checkpoint(run_dir, step, torch.nn.Linear(4, 4))
"""


def start_killed_saver(run_dir: Path, where: str, step: int, marker: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(run_dir), where, str(marker), str(step)],
                            env=ditlab_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"saver exited early ({proc.returncode}): {proc.stdout.read().decode()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"saver never reached its pause point ({path.name})")
        time.sleep(0.05)


@pytest.mark.parametrize("where,step", [
    ("model", 20),    # killed while writing model.safetensors
    ("state", 20),    # killed while writing state.pt
    ("publish", 20),  # killed after the new folder is in place, before `latest` names it
    ("swap", 10),     # re-saving step 10: killed while the old copy is moved aside
])
def test_saver_killed_mid_save_keeps_the_previous_checkpoint(tmp_path, where, step):
    torch.manual_seed(0)
    previous = nn.Linear(4, 4)
    save_checkpoint(tmp_path, 10, previous)
    root, marker = tmp_path / "checkpoints", tmp_path / "paused"
    proc = start_killed_saver(tmp_path, where, step, marker)
    try:
        wait_for(marker, proc)
        named = root / (root / "latest").read_text().strip()
        # At the moment of the kill `latest` names a complete folder; only while step 10 is re-saved
        # is that folder briefly absent (moved aside whole, never partial).
        assert ckpt._validate(named) is None or (where == "swap" and not named.exists())
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    if where == "swap":  # resume finds the old copy of step 10, and says so
        with pytest.warns(UserWarning, match=r"step_00000010.*using .*\.old-step_00000010"):
            found = find_latest_checkpoint(tmp_path)
        fresh = nn.Linear(4, 4)
        load_checkpoint(found, fresh)
        assert same(fresh.state_dict(), previous.state_dict())
    else:
        assert_previous_survives(tmp_path, previous)
    save_checkpoint(tmp_path, 30, nn.Linear(4, 4))  # the next save clears what the dead saver left
    assert hidden_files(tmp_path) == []
    fresh = nn.Linear(4, 4)
    load_checkpoint(root / "step_00000010", fresh)  # step 10 is back under its own name
    assert same(fresh.state_dict(), previous.state_dict())


# ---- item 6 -------------------------------------------------------------------------------------
class FullDisk(io.RawIOBase):
    """A file that accepts ``budget`` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, path, budget: int):
        self._f, self._left = open(path, "wb"), budget  # noqa: SIM115 - closed by close()

    def writable(self):
        return True

    def write(self, b):
        b = b.encode() if isinstance(b, str) else b  # `latest` is written in text mode
        n = min(len(b), self._left)
        self._f.write(bytes(b[:n]))
        self._left -= n
        if n < len(b):
            raise OSError(errno.ENOSPC, "No space left on device")
        return n

    def fileno(self):
        return self._f.fileno()

    def close(self):
        self._f.close()
        super().close()


def full_disk_open(file_prefix: str, budget: int):
    """An ``open`` for ditlab.train.checkpoint whose writes to files named ``file_prefix*`` hit a full disk."""
    def fake_open(path, mode="r", *a, **k):
        if Path(path).name.startswith(file_prefix) and "w" in mode:
            return FullDisk(path, budget)
        return open(path, mode, *a, **k)
    return fake_open


def enospc_safetensors(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


# What torch.save raises when it writes to a path on a full disk (its C++ writer, not an OSError).
TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


def torch_save_runtime_error(real=torch.save):
    def save(obj, f, *a, **k):
        if isinstance(f, io.BytesIO):
            return real(obj, f, *a, **k)
        f.write(b"PK\x03\x04partial")
        raise TORCH_FULL
    return save


def setup_full_disk(monkeypatch, where: str) -> None:
    if where == "safetensors ENOSPC":
        monkeypatch.setattr(ckpt, "save_file", enospc_safetensors)
    elif where == "state.pt ENOSPC":
        monkeypatch.setattr(ckpt, "open", full_disk_open("state.pt", 300), raising=False)
    else:
        monkeypatch.setattr(ckpt.torch, "save", torch_save_runtime_error())


def checkpoints_of(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (Path(run_dir) / "checkpoints").iterdir())


@pytest.mark.parametrize("where", ["safetensors ENOSPC", "state.pt ENOSPC", "torch.save RuntimeError"])
def test_disk_full_while_writing_keeps_older_checkpoints(tmp_path, monkeypatch, where):
    torch.manual_seed(0)
    older, previous = nn.Linear(4, 4), nn.Linear(4, 4)
    save_checkpoint(tmp_path, 5, older, keep=2)
    save_checkpoint(tmp_path, 10, previous, keep=2)
    setup_full_disk(monkeypatch, where)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(tmp_path, 15, nn.Linear(4, 4), keep=2)  # keep=2 would prune step 5 after a success
    monkeypatch.undo()
    msg = str(err.value)
    assert "step_00000015" in msg and "kept" in msg
    assert "The disk looks full" in msg, msg  # in words, also for torch's cryptic RuntimeError
    assert hidden_files(tmp_path) == []
    assert checkpoints_of(tmp_path) == ["latest", "step_00000005", "step_00000010"]
    assert_previous_survives(tmp_path, previous)


def test_disk_full_while_writing_latest(tmp_path, monkeypatch):
    torch.manual_seed(0)
    previous = nn.Linear(4, 4)
    save_checkpoint(tmp_path, 10, previous)
    monkeypatch.setattr(ckpt, "open", full_disk_open(".latest.tmp", 0), raising=False)
    with pytest.raises(CheckpointError, match="could not be updated.*names an older one") as err:
        save_checkpoint(tmp_path, 20, nn.Linear(4, 4))
    monkeypatch.undo()
    assert hidden_files(tmp_path) == []  # the half-written .latest.tmp-* is gone
    assert "The disk looks full" in str(err.value)
    assert_previous_survives(tmp_path, previous)


# ---- item 7 -------------------------------------------------------------------------------------
def truncate(path: Path, keep_fraction: float = 0.5) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * keep_fraction)])


@pytest.mark.parametrize("name,fraction", [("model.safetensors", 0.5), ("ema.safetensors", 0.9),
                                           ("state.pt", 0.5), ("state.pt", 0.0)])
def test_truncated_newest_checkpoint_falls_back_naming_both(tmp_path, name, fraction):
    torch.manual_seed(0)
    previous = nn.Linear(4, 4)
    save_checkpoint(tmp_path, 10, previous, ema=nn.Linear(4, 4))
    newest = save_checkpoint(tmp_path, 20, nn.Linear(4, 4), ema=nn.Linear(4, 4))
    truncate(newest / name, fraction)
    with pytest.warns(UserWarning, match=rf"step_00000020.*{name}.*using .*step_00000010"):
        assert find_latest_checkpoint(tmp_path).name == "step_00000010"
    fresh = nn.Linear(4, 4)
    with pytest.warns(UserWarning, match="using"):
        load_checkpoint(tmp_path, fresh)
    assert same(fresh.state_dict(), previous.state_dict())


def test_trainer_auto_resume_skips_a_truncated_checkpoint(data, straight, tmp_path):
    """The straight run's step 10 is truncated: resume from step 5, redo 6-10, end where it ended."""
    run = copy_run(straight, tmp_path / "run")
    truncate(run / "checkpoints" / "step_00000010" / "state.pt")
    with pytest.warns(UserWarning, match=r"step_00000010.*state\.pt.*using .*step_00000005"):
        trainer = make_trainer(data, run, 10, resume=True)
    assert trainer.step == 5
    assert trainer.run() == 0
    assert differing(record(straight), record(run)) == set()


# ---- item 8 -------------------------------------------------------------------------------------
def test_resume_with_changed_shapes_lists_every_key(data, first_half, tmp_path):
    run = copy_run(first_half, tmp_path / "run")
    before = (run / "config.yaml").read_text()
    with pytest.raises(ValueError) as err:
        make_trainer(data, run, 10, "model.hidden_size=64", "model.depth=1", resume=True)
    msg = str(err.value)
    assert "model.hidden_size: 32 -> 64" in msg and "model.depth: 2 -> 1" in msg and str(run) in msg
    assert (run / "config.yaml").read_text() == before  # nothing rewritten by the refused resume
    assert find_latest_checkpoint(run).name == "step_00000005"


def test_resume_with_changed_lr_and_steps_warns_and_uses_them(data, first_half, tmp_path, capsys):
    run = copy_run(first_half, tmp_path / "run")
    trainer = make_trainer(data, run, 7, "optim.lr=0.0005", resume=True)
    out = capsys.readouterr().out
    assert "resuming with optim.lr changed from 0.001 to 0.0005" in out
    assert "resuming with train.steps changed from 5 to 7" in out
    assert trainer.step == 5 and trainer.current_lr() == 0.0005
    assert trainer.run() == 0 and trainer.step == 7
    assert all(g["lr"] == 0.0005 for g in trainer.optimizer.param_groups)
    make_trainer(data, run, 7, "optim.lr=0.0005", resume=True)  # the new values were saved: no warning now
    assert "warning" not in capsys.readouterr().out


# ---- item 9 -------------------------------------------------------------------------------------
def tag_storages_as_cuda(monkeypatch) -> None:
    """Make torch.save record every CPU storage as living on cuda:0, as a GPU run's state.pt does."""
    registry = list(torch.serialization._package_registry)
    tagger = (lambda storage: "cuda:0" if storage.device.type == "cpu" else None)
    monkeypatch.setattr(torch.serialization, "_package_registry", [(0, tagger, lambda obj, loc: None)] + registry)


def gpu_shaped_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """What build_optimizer makes on a GPU: fused AdamW with a device-tensor lr."""
    opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3), fused=True)
    model(torch.randn(3, 4)).square().sum().backward()
    opt.step()
    opt.zero_grad()
    return opt


def state_devices(obj) -> set[str]:
    if isinstance(obj, torch.Tensor):
        return {obj.device.type}
    if isinstance(obj, dict):
        return set().union(*(state_devices(v) for v in obj.values())) if obj else set()
    if isinstance(obj, (list, tuple)):
        return set().union(*(state_devices(v) for v in obj)) if obj else set()
    return set()


def test_cuda_tagged_state_loads_on_cpu_with_map_location(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    opt = gpu_shaped_optimizer(model)
    rng = {**ckpt.capture_rng_state(), "cuda": [torch.get_rng_state()]}  # a GPU run saves CUDA RNG states too
    tag_storages_as_cuda(monkeypatch)
    folder = save_checkpoint(tmp_path, 3, model, opt, ema=EMA(model, 0.9), state={"rng": rng})
    monkeypatch.undo()
    if not torch.cuda.is_available():  # the file really claims CUDA: a plain load fails on this machine
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(folder / "state.pt", weights_only=True)

    cpu_model = nn.Linear(4, 4)
    cpu_opt = torch.optim.AdamW(cpu_model.parameters(), lr=1e-3, foreach=True)
    ema = EMA(cpu_model, 0.9)
    st = load_checkpoint(tmp_path, cpu_model, cpu_opt, ema=ema, map_location="cpu")
    assert st["step"] == 3 and state_devices(st) <= {"cpu"}
    assert state_devices(cpu_opt.state_dict()) == {"cpu"}
    assert same(cpu_model.state_dict(), model.state_dict())
    restore_rng_state(st["rng"])  # the CUDA states are skipped on a machine without CUDA
    assert load_weights(tmp_path)["weight"].device.type == "cpu"


def test_gpu_shaped_optimizer_resumes_as_the_cpu_optimizer(tmp_path):
    """The optimizer's implementation (fused, foreach) and its lr's type belong to the machine that
    loads: a fused GPU state must not turn the CPU optimizer fused, nor the reverse."""
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    save_checkpoint(tmp_path, 1, model, gpu_shaped_optimizer(model))
    cpu_opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    load_checkpoint(tmp_path, optimizer=cpu_opt)
    group = cpu_opt.param_groups[0]
    assert not group["fused"] and group["foreach"] and isinstance(group["lr"], float), group
    assert all(s["step"].device.type == "cpu" for s in cpu_opt.state.values())
    model(torch.randn(3, 4)).sum().backward()
    cpu_opt.step()


def test_cpu_state_keeps_a_fused_optimizer_fused(tmp_path):
    """The reverse direction: train.nan_check=log relies on fused AdamW honouring found_inf."""
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    cpu_opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    model(torch.randn(3, 4)).sum().backward()
    cpu_opt.step()
    save_checkpoint(tmp_path, 1, model, cpu_opt)
    lr = torch.tensor(1e-3)
    fused = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    load_checkpoint(tmp_path, optimizer=fused)
    assert fused.param_groups[0]["fused"] and fused.param_groups[0]["lr"] is lr
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(3, 4)).sum().backward()
    fused.found_inf = torch.ones(())  # what the sync-free guard sets on a non-finite step
    fused.step()
    assert same(model.state_dict(), before)


def gpu_shaped_optimizer_for(model: nn.Module) -> torch.optim.Optimizer:
    """build_optimizer's GPU choice, before any step."""
    return torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3), fused=True)


def test_trainer_resumes_on_cpu_from_a_gpu_shaped_checkpoint(data, tmp_path, monkeypatch):
    first = make_trainer(data, tmp_path / "r", 5, "model.depth=1")
    first.optimizer = gpu_shaped_optimizer_for(first.model)
    real_capture = trainer_mod.capture_rng_state
    monkeypatch.setattr(trainer_mod, "capture_rng_state", lambda: {**real_capture(), "cuda": [torch.get_rng_state()]})
    tag_storages_as_cuda(monkeypatch)
    assert first.run() == 0
    monkeypatch.undo()
    resumed = make_trainer(data, tmp_path / "r", 7, "model.depth=1", resume=True)
    assert resumed.step == 5
    assert not resumed.optimizer.param_groups[0]["fused"]
    assert resumed.run() == 0 and resumed.step == 7
    assert all(torch.isfinite(p).all() for p in resumed.model.parameters())


def _never_called():
    raise AssertionError("unpickling ran code")


class Payload:
    def __reduce__(self):
        return (_never_called, ())


def test_state_with_pickled_code_is_refused(tmp_path):
    folder = save_checkpoint(tmp_path, 1, nn.Linear(2, 2))
    torch.save({"format_version": 1, "step": 1, "x": Payload()}, folder / "state.pt")
    with pytest.raises(CheckpointError, match="cannot read .*state.pt"):
        load_checkpoint(folder)


def gpu_script():
    return load_script("reliability_gpu")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_reliability_script_gpu_to_cpu_check(tmp_path, device):
    """The script's item-9 check: on the CPU a dry run of its mechanics, on a GPU the real thing."""
    result = gpu_script().check_checkpoint_gpu_to_cpu(torch.device(device), tmp_path)
    assert result["passed"], result


def test_cli_resume_with_no_valid_checkpoint_is_a_clear_error(data, first_half, tmp_path, capsys):
    from ditlab.cli import main

    run = copy_run(first_half, tmp_path / "run")
    truncate(run / "checkpoints" / "step_00000005" / "model.safetensors")
    code = main(["train", str(DEMO), *overrides(data, run, 10), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "ditlab: error: no valid checkpoint" in err and "step_00000005" in err

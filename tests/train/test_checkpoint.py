"""Checkpoints: round trips, atomicity under failures, corruption handling, wrapper-free names."""
import errno
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from ditlab.train import checkpoint as ckpt
from ditlab.train.checkpoint import (
    CHECKPOINT_FORMAT_VERSION, CheckpointError, capture_rng_state, find_latest_checkpoint,
    load_checkpoint, load_weights, restore_rng_state, save_checkpoint,
)
from ditlab.train.ema import EMA


class Tiny(nn.Module):
    """Tied weights, a BatchNorm (buffers) and a non-contiguous buffer: the awkward cases."""

    def __init__(self, d=4, vocab=5):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, vocab)
        self.head.weight = self.emb.weight
        self.norm = nn.BatchNorm1d(d)
        self.register_buffer("t", torch.randn(3, d).t())

    def forward(self, idx):
        return self.head(self.norm(self.emb(idx)))


def trained(seed=0):
    torch.manual_seed(seed)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.tensor([0, 1, 2, 3])).sum().backward()
    opt.step()
    return model, opt


def assert_same_weights(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def ckdirs(run: Path):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_round_trip_layout_and_state(tmp_path):
    model, opt = trained()
    ema = EMA(model, decay=0.9)
    folder = save_checkpoint(tmp_path, 1000, model, opt, ema=ema,
                             state={"data": {"epoch": 2, "index": 7}, "config": {"lr": 1e-2, "arch": "x"}})
    assert folder == tmp_path / "checkpoints" / "step_00001000"
    assert sorted(p.name for p in folder.iterdir()) == ["ema.safetensors", "model.safetensors", "state.pt"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00001000"

    model2, opt2 = trained(seed=1)
    ema2 = EMA(model2, decay=0.9)
    st = load_checkpoint(tmp_path, model2, opt2, ema=ema2)
    assert_same_weights(model, model2)
    assert_same_weights(ema.module, ema2.module)
    assert model2.head.weight is model2.emb.weight  # tie survives loading
    assert st["step"] == 1000 and st["format_version"] == CHECKPOINT_FORMAT_VERSION
    assert st["data"] == {"epoch": 2, "index": 7} and st["config"]["arch"] == "x"
    assert "optimizer" not in st and st["checkpoint_dir"] == str(folder)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    for i in s1:
        for k in s1[i]:
            torch.testing.assert_close(s1[i][k], s2[i][k])


def test_rng_round_trip():
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3), np.random.randn())
    restore_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(3), np.random.randn())
    assert first[0] == second[0] and first[1] == second[1] and first[3] == second[3]
    assert torch.equal(first[2], second[2])


def test_rng_survives_save_and_load(tmp_path):
    model, _ = trained()
    save_checkpoint(tmp_path, 1, model)
    expected = torch.rand(4)
    torch.manual_seed(123)
    restore_rng_state(load_checkpoint(tmp_path)["rng"])
    assert torch.equal(torch.rand(4), expected)


def test_prune_keeps_newest(tmp_path):
    model, _ = trained()
    for step in range(1, 6):
        save_checkpoint(tmp_path, step * 100, model, keep=2)
    assert ckdirs(tmp_path) == ["latest", "step_00000400", "step_00000500"]


def test_same_step_twice_replaces(tmp_path):
    a, _ = trained(0)
    b, _ = trained(1)
    save_checkpoint(tmp_path, 10, a)
    save_checkpoint(tmp_path, 10, b)
    assert ckdirs(tmp_path) == ["latest", "step_00000010"]
    fresh = Tiny()
    load_checkpoint(tmp_path, fresh)
    assert_same_weights(fresh, b)


def _fail_save_file(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _fail_torch_save_to_file(real):
    def save(obj, f, *a, **k):
        if not hasattr(f, "getvalue"):  # let the in-memory state check pass, fail the real write
            raise RuntimeError("torch.save exploded")
        return real(obj, f, *a, **k)
    return save


@pytest.mark.parametrize("where", ["safetensors", "torch.save", "rename"])
def test_failed_save_keeps_previous(tmp_path, monkeypatch, where):
    a, _ = trained(0)
    b, _ = trained(1)
    save_checkpoint(tmp_path, 10, a)
    if where == "safetensors":
        monkeypatch.setattr(ckpt, "save_file", _fail_save_file)
    elif where == "torch.save":
        monkeypatch.setattr(ckpt.torch, "save", _fail_torch_save_to_file(torch.save))
    else:
        real = os.replace

        def replace(src, dst):
            if Path(src).name.startswith(".tmp-step"):
                raise OSError(errno.EIO, "I/O error")
            return real(src, dst)
        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CheckpointError, match="step_00000010.*kept"):
        save_checkpoint(tmp_path, 10, b)  # same step: the old copy must survive too
    with pytest.raises(CheckpointError, match="kept"):
        save_checkpoint(tmp_path, 20, b)
    monkeypatch.undo()
    assert ckdirs(tmp_path) == ["latest", "step_00000010"]  # no temp or old folders left
    fresh = Tiny()
    load_checkpoint(tmp_path, fresh)
    assert_same_weights(fresh, a)


def test_unstorable_state_rejected_before_writing(tmp_path):
    model, _ = trained()
    with pytest.raises(CheckpointError, match="state cannot be stored"):
        save_checkpoint(tmp_path, 1, model, state={"config": {"out": Path("/x")}})
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch.compile's imports
def test_wrapped_models_save_plain_names(tmp_path):
    model, _ = trained()
    compiled = torch.compile(model)  # wrapping only; nothing is compiled until it is called
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    folder = save_checkpoint(tmp_path, 1, compiled, ema={"module." + k: v for k, v in model.state_dict().items()})
    for name in ("model.safetensors", "ema.safetensors"):
        with safe_open(str(folder / name), framework="pt") as f:
            assert set(f.keys()) == set(model.state_dict())
    target = torch.compile(Tiny())
    load_checkpoint(folder, target)
    assert_same_weights(target._orig_mod, model)


def test_shape_mismatch_strict_and_lenient(tmp_path):
    model, _ = trained()
    save_checkpoint(tmp_path, 1, model)
    other = Tiny(d=6)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path, other)
    msg = str(err.value)
    assert "emb.weight checkpoint (5, 4) vs model (5, 6)" in msg and "model.safetensors" in msg

    class Extra(Tiny):
        def __init__(self):
            super().__init__()
            self.extra = nn.Linear(2, 2)
    extra = Extra()
    with pytest.raises(CheckpointError, match=r"missing from checkpoint \(2\): extra.bias, extra.weight"):
        load_checkpoint(tmp_path, extra)
    with pytest.warns(UserWarning, match="strict=False"):
        load_checkpoint(tmp_path, extra, strict=False)
    torch.testing.assert_close(extra.emb.weight, model.emb.weight)


def test_corrupt_latest_falls_back(tmp_path):
    model, _ = trained()
    save_checkpoint(tmp_path, 1, model)
    bad = save_checkpoint(tmp_path, 2, model)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(bad, Tiny())
    with pytest.warns(UserWarning, match=r"step_00000002.*using .*step_00000001"):
        assert find_latest_checkpoint(tmp_path).name == "step_00000001"
    (tmp_path / "checkpoints" / "step_00000001" / "state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        find_latest_checkpoint(tmp_path)


def test_missing_latest_file_and_empty_run(tmp_path):
    assert find_latest_checkpoint(tmp_path) is None
    model, _ = trained()
    save_checkpoint(tmp_path, 3, model)
    (tmp_path / "checkpoints" / "latest").unlink()
    with pytest.warns(UserWarning, match="latest is missing"):
        assert find_latest_checkpoint(tmp_path).name == "step_00000003"


def test_state_missing_required_key(tmp_path):
    model, _ = trained()
    folder = save_checkpoint(tmp_path, 1, model)
    torch.save({"step": 1}, folder / "state.pt")
    with pytest.raises(CheckpointError, match=r"state\.pt is missing required key 'format_version'"):
        load_checkpoint(folder)


def test_load_weights(tmp_path):
    model, opt = trained()
    ema = EMA(model, decay=0.5)
    folder = save_checkpoint(tmp_path, 1, model, opt, ema=ema)
    for src in (tmp_path, folder, folder / "ema.safetensors"):
        w = load_weights(src)
        torch.testing.assert_close(w["emb.weight"], ema.module.emb.weight)
    torch.testing.assert_close(load_weights(tmp_path, "model")["head.bias"], model.head.bias)
    save_checkpoint(tmp_path, 2, model)
    with pytest.raises(CheckpointError, match="without EMA"):
        load_weights(tmp_path, "ema")
    with pytest.raises(CheckpointError, match="pass ema=None"):
        load_checkpoint(tmp_path, ema=EMA(model, 0.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_checkpoint_loads_on_cpu(tmp_path):
    model, opt = trained()
    model.cuda()
    save_checkpoint(tmp_path, 1, model, ema=EMA(model, 0.9))
    cpu = Tiny()
    st = load_checkpoint(tmp_path, cpu, ema=EMA(Tiny(), 0.9))
    assert_same_weights(cpu, model.cpu())
    assert len(st["rng"]["cuda"]) == torch.cuda.device_count()
    assert load_weights(tmp_path)["emb.weight"].device.type == "cpu"
    expected = torch.rand(3, device="cuda")
    torch.cuda.manual_seed_all(7)
    restore_rng_state(st["rng"])
    assert torch.equal(torch.rand(3, device="cuda"), expected)


CRASH = """
import os, sys, torch
from ditlab.train import checkpoint as ckpt
real = os.replace
def replace(src, dst):
    if os.path.basename(str(src)).startswith(sys.argv[2]):
        os._exit(3)  # a kill: no except/finally runs
    return real(src, dst)
os.replace = replace
torch.manual_seed(1)
ckpt.save_checkpoint(sys.argv[1], 20, torch.nn.Linear(2, 2))
"""


@pytest.mark.parametrize("at", [".tmp-step", ".latest.tmp"])
def test_killed_mid_save(tmp_path, at):
    import subprocess
    import sys

    model = nn.Linear(2, 2)
    save_checkpoint(tmp_path, 10, model)
    env = dict(os.environ, PYTHONPATH=str(Path(ckpt.__file__).parents[2]))
    rc = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path), at], env=env).returncode
    assert rc == 3
    # Either the new folder never appeared, or it did but `latest` still names step 10: both load.
    assert find_latest_checkpoint(tmp_path).name == "step_00000010"
    fresh = nn.Linear(2, 2)
    load_checkpoint(tmp_path, fresh)
    torch.testing.assert_close(fresh.weight, model.weight)
    save_checkpoint(tmp_path, 30, model)  # the next save clears the dead one's temp folder
    assert not [p for p in ckdirs(tmp_path) if p.startswith(".")]


def test_timed_seconds_trained_sums_the_latest_checkpoints_segments(tmp_path):
    """What a resumed time-limited run has used of its limit; an untimed segment counts 0, no checkpoint 0."""
    assert ckpt.timed_seconds_trained(tmp_path / "run") == 0.0
    save_checkpoint(tmp_path / "run", 3, nn.Linear(2, 2), state={"segments": [{"timed_seconds": 2.5}]})
    save_checkpoint(tmp_path / "run", 5, nn.Linear(2, 2), state={"segments": [
        {"timed_seconds": 2.5}, {"timed_seconds": 4.0}, {"timed_seconds": None}]})
    assert ckpt.timed_seconds_trained(tmp_path / "run") == pytest.approx(6.5)
    save_checkpoint(tmp_path / "old", 1, nn.Linear(2, 2))  # saved before segments were recorded
    assert ckpt.timed_seconds_trained(tmp_path / "old") == 0.0


def test_timed_steps_of_each_segment():
    """A resumed run's timed steps are every segment's (summary.json's timed_steps beside timed_seconds, their
    sum); a segment saved before it recorded them counts its steps past untimed_steps, an untimed one none."""
    from ditlab.train.checkpoint import segment_timed_steps

    segments = [{"start_step": 0, "end_step": 100, "timed_seconds": 5.0},  # saved before timed_steps
                {"start_step": 100, "end_step": 250, "timed_seconds": 7.0, "timed_steps": 148},
                {"start_step": 250, "end_step": 251, "timed_seconds": 0.0}]  # stopped inside its untimed steps
    assert [segment_timed_steps(seg, untimed_steps=2) for seg in segments] == [98, 148, 0]
    assert sum(segment_timed_steps(seg, untimed_steps=2) for seg in segments) == 98 + 148

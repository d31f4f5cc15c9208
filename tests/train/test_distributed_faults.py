"""Issue 7, items 20 and 21 (item 19 is tests/tasks/test_ddp_condition_dropout.py): the Trainer under
DDP with two CPU (gloo) processes.

20. The EMA is equal on all ranks and carries no "module." prefix.
21. A NaN loss or a SIGTERM on ONE rank: every rank stops at the same step with the same exit code, and
    nothing hangs (each case must finish within 20 s, or the test fails).
"""
import os
import signal
import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ditlab.config import load_config

TIMEOUT_S = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(data, run_dir, *extra):
    return load_config(None, [
        "model.arch=DiT-S/4", "model.hidden_size=32", "model.depth=1", "model.num_heads=2", "model.num_classes=4",
        f"data.path={data}", "train.batch_size=8", "train.device=cpu", "train.log_every=1", "train.sample_every=0",
        "train.ckpt_every=1000", f"train.run_dir={run_dir}", "train.steps=30", "ema.decay=0.9", *extra])


def _worker(rank, world, port, data, run_dir, fault, results, extra=()):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from ditlab.train.distributed import shutdown
    from ditlab.train.trainer import Trainer

    trainer = Trainer(_cfg(data, run_dir, *extra), progress=False)
    if rank == 1 and fault:
        inner = trainer.train_step

        def faulty_step():
            if trainer.step == 3:  # the 4th step of rank 1 only
                if fault == "nan":
                    loss_fn = trainer._loss_fn
                    trainer._loss_fn = lambda idx: loss_fn(idx) * float("nan")
                elif fault == "sigterm":
                    os.kill(os.getpid(), signal.SIGTERM)
            return inner()

        trainer.train_step = faulty_step
    try:
        code = trainer.run()
        ema = torch.cat([p.detach().flatten() for p in trainer.ema.module.parameters()])
        params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        names = list(trainer.ema.module.state_dict())
        results[rank] = (code, trainer.step, ema, names, params)
    finally:
        shutdown(trainer.dist)


def _run_two(tmp_path, fault, extra=(), timeout_s=TIMEOUT_S):
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8), labels=np.arange(32) % 4)
    results = mp.Manager().dict()
    ctx = mp.start_processes(_worker, args=(2, _free_port(), str(data), str(tmp_path / "run"), fault, results,
                                            tuple(extra)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=0.5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"DDP with a {fault or 'no'} fault on one rank did not finish within {timeout_s} s (a hang)")
    return results[0], results[1]


def test_ema_is_equal_on_all_ranks_and_unprefixed(tmp_path):
    (c0, s0, ema0, names0, _), (c1, s1, ema1, *_) = _run_two(tmp_path, None)
    assert c0 == c1 == 0 and s0 == s1 == 30
    assert torch.equal(ema0, ema1)
    assert not any(n.startswith(("module.", "_orig_mod.")) for n in names0)


def test_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    (c0, s0, *_), (c1, s1, *_) = _run_two(tmp_path, "nan")
    assert c0 == c1 == 2  # EXIT_NONFINITE on both ranks
    assert s0 == s1 == 3  # the bad 4th step was not applied anywhere


def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    (c0, s0, *_), (c1, s1, *_) = _run_two(tmp_path, "sigterm")
    assert c0 == c1 == 128 + signal.SIGTERM
    assert s0 == s1 < 30  # agreed at a decision step, long before the end
    from ditlab.train.checkpoint import find_latest_checkpoint

    latest = find_latest_checkpoint(tmp_path / "run")
    assert latest is not None and latest.name == f"step_{s0:08d}"  # rank 0 saved at the agreed step


@pytest.mark.parametrize("mode", ["module", "step"])
def test_compiled_ddp_keeps_the_ranks_in_step(tmp_path, mode):
    """torch.compile around DDP (train.ddp_compile=module) or around the whole loss with DDP inside
    (step): the gradients are still all-reduced, so both ranks hold the same weights."""
    extra = ["train.compile=true", f"train.ddp_compile={mode}", "train.steps=3"]
    (c0, s0, _, _, p0), (c1, s1, _, _, p1) = _run_two(tmp_path, None, extra, timeout_s=240)
    assert c0 == c1 == 0 and s0 == s1 == 3
    assert torch.equal(p0, p1)



def test_gradients_as_bucket_views_change_nothing(tmp_path):
    """train.ddp_grad_as_bucket_view only removes the copies in and out of DDP's buckets."""
    def weights(name, *extra):
        (tmp_path / name).mkdir()
        (c0, s0, _, _, p0), (c1, s1, _, _, p1) = _run_two(tmp_path / name, None, ["train.steps=5", *extra])
        assert c0 == c1 == 0 and s0 == s1 == 5
        assert torch.equal(p0, p1), f"ranks disagree with {extra}"
        return p0

    assert torch.equal(weights("views", "train.ddp_grad_as_bucket_view=true"), weights("plain"))


def test_bf16_all_reduce_off_cuda_is_a_clear_error(tmp_path):
    """PyTorch's bf16 compression hook needs NCCL; on gloo the run must say so up front."""
    with pytest.raises(Exception, match="ddp_comm_hook=bf16 needs CUDA"):
        _run_two(tmp_path, None, ["train.ddp_comm_hook=bf16"])

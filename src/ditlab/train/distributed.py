"""Data-parallel training through PyTorch's own engine: torchrun + DistributedDataParallel.

``torchrun --nproc_per_node=N -m ditlab train CONFIG`` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address in their environment; :func:`init_distributed` reads them.
Without them (a plain ``ditlab train``) everything here is a no-op and the run is a world of one.

Semantics (docs/distributed.md):
- ``train.batch_size`` is the **global** batch: each rank takes its slice of the same global batch
  (the data order is one permutation per epoch, shared by all ranks), so the learning rate, the
  data order and the checkpoint's data position mean the same whatever the world size.
- Rank 0 writes (checkpoints, logs, samples); every rank reads the checkpoint when resuming.
- Decisions that end the loop (time limit, SIGTERM/SIGINT) are agreed by all ranks (MAX-reduce)
  at the same steps, so no rank waits forever in a gradient all-reduce the others never join.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on the CPU); a world of one
    without torchrun. Idempotent: a second call returns the group already joined.

    ``device``: train.device; "cpu" forces gloo even where GPUs exist (CPU tests). Each rank uses
    the GPU of its LOCAL_RANK.
    """
    if not launched_by_torchrun():
        return SINGLE
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    info = DistInfo(rank, world, local)
    if dist.is_initialized():
        return info
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible: start "
                               "torchrun with --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s),
                            **({"device_id": torch.device("cuda", local)} if use_cuda else {}))
    return info


def local_device(info: DistInfo, device: str) -> torch.device | None:
    """The device of this rank under torchrun (cuda:LOCAL_RANK), or None to resolve as usual."""
    if not info.enabled or device == "cpu" or not torch.cuda.is_available():
        return None
    return torch.device("cuda", info.local_rank)


def rank_device(info: DistInfo, device: str, setting: str = "train.device") -> torch.device:
    """This process's device: cuda:LOCAL_RANK under torchrun on GPUs, else ``device`` resolved as
    usual (``setting`` names the config key or flag in errors)."""
    from ditlab.devices import resolve_device

    return local_device(info, device) or resolve_device(device, setting=setting)


def shutdown(info: DistInfo, sync: bool = False) -> None:
    """Leave the process group. ``sync``: wait for every rank first (a run that ended normally), so
    that no rank tears its connections down while another still finishes its last collectives."""
    if info.enabled and dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def any_rank(info: DistInfo, flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of boolean flags over all ranks (one small all-reduce)."""
    if not info.enabled:
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def gather_objects(info: DistInfo, obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(info: DistInfo, value: torch.Tensor) -> torch.Tensor:
    if not info.enabled:
        return value
    value = value.detach().float().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def rank_slice(info: DistInfo, n: int) -> slice:
    """This rank's contiguous share of n items (the first ranks take one more when n % world != 0)."""
    base, extra = divmod(n, info.world_size)
    start = info.rank * base + min(info.rank, extra)
    return slice(start, start + base + (1 if info.rank < extra else 0))


def per_rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """Seed of a rank's random draws (noise, timesteps, dropout): distinct per rank and per step."""
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1)

"""Condition dropout under DDP: one rank drops every condition, the other none — no reduction error.

Dropped conditions are chosen with torch.where against learned nulls, so every parameter takes part
in every step on every rank and DDP runs without find_unused_parameters.
"""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ditlab.config import ModelConfig, TaskConfig
from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.schedules import FlowSchedule
from ditlab.tasks.superres.model import build_superres_model
from ditlab.tasks.superres.task import SuperResTask


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial weights on both ranks
        model = build_superres_model(ModelConfig(arch="DiT-S/4", hidden_size=32, depth=1, num_heads=2,
                                                 num_classes=3, label_dropout=0.0), 16, 3, 2)
        with torch.no_grad():  # leave the adaLN-Zero start, so gradients reach every pathway at once
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        ddp = torch.nn.parallel.DistributedDataParallel(model)  # find_unused_parameters=False (the default)
        task = SuperResTask(ddp, Objective(FlowSchedule(), "velocity"),
                            TaskConfig(kind="superres", factor=2, cond_dropout=1.0 if rank == 0 else 0.0),
                            label_dropout=1.0 if rank == 0 else 0.0)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        torch.manual_seed(100 + rank)
        for _ in range(2):
            loss = task.loss_on_batch(torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0])).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        null_grad = model.null_tokens["lowres"].grad.clone()
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        results[rank] = (params, null_grad)
    finally:
        dist.destroy_process_group()


def test_ddp_step_with_dropout_one_on_one_rank():
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), results), nprocs=2, join=True)
    (p0, g0), (p1, g1) = results[0], results[1]
    assert torch.equal(p0, p1)  # gradients were reduced: both ranks hold the same weights
    assert torch.equal(g0, g1) and g0.abs().sum() > 0  # the null tokens learn from rank 0's dropped samples

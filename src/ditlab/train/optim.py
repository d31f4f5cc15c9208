"""Optimizer and learning-rate schedule, built from OptimConfig."""
from __future__ import annotations

import math

import torch


def build_optimizer(model: torch.nn.Module, optim_cfg, device: torch.device) -> torch.optim.Optimizer:
    # Fused AdamW runs the whole update in a few kernels on the GPU; the CPU has no fused version
    # before torch 2.4 and it gives no gain there, so the CPU uses the foreach path.
    fused = optim_cfg.fused and device.type == "cuda"
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        # A device tensor lr lets warm-up change it without a host sync or a recompilation.
        lr=torch.tensor(optim_cfg.lr, device=device) if fused else optim_cfg.lr,
        betas=tuple(optim_cfg.betas),
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
        fused=fused,
        foreach=None if fused else True,
    )


def lr_at(step: int, optim_cfg, progress: float = 0.0) -> float:
    """Linear warm-up to optim.lr over optim.warmup_steps, then constant or decaying with ``progress``
    (the fraction of the run done, in [0, 1])."""
    if optim_cfg.warmup_steps > 0 and step < optim_cfg.warmup_steps:
        return optim_cfg.lr * (step + 1) / optim_cfg.warmup_steps
    if optim_cfg.decay == "constant":
        return optim_cfg.lr
    p = min(max(progress, 0.0), 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * p)) if optim_cfg.decay == "cosine" else 1 - p
    return optim_cfg.lr * (optim_cfg.min_lr_ratio + (1 - optim_cfg.min_lr_ratio) * shape)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr

"""Prompts of in-context linear regression (Garg et al. 2022), their scaling and the curriculum.

A prompt is ``n_points`` pairs (x_i, y_i): x_i ~ N(0, I_d), one w ~ N(0, tau^2 I_d) per prompt,
y_i = w.x_i + eps_i with eps_i ~ N(0, sigma^2).

Scaling: the network sees x as drawn and y / (tau sqrt(d_active)). Var(w.x) = tau^2 d, so the
noiseless part of a scaled y has unit variance whatever d is, and a squared error in network units
is the squared error divided by tau^2 d: the "error / d" of Garg et al. (who use tau = 1). The
scaled problem is itself a linear regression with prior w ~ N(0, I / d) and noise sigma / (tau sqrt(d)).

Curriculum: the active dimension and the number of points grow with the training step. Shapes never
change (x always has d coordinates, a prompt always n_points pairs): inactive coordinates are zero
and points past the active count carry no loss (the causal mask already hides them from earlier
points). The step lives in a device tensor that ``batch`` advances itself, so the compiled step
sees one graph for the whole run and never syncs with the host; the trainer sets it on resume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

# The data order draws indices from range(VIRTUAL_EPOCH); prompts are drawn fresh from torch's global
# RNG (saved in checkpoints, so resume is exact), so only the count of indices matters.
VIRTUAL_EPOCH = 1 << 20


@dataclass
class Prompts:
    """A batch of prompts in raw units (not scaled)."""

    x: torch.Tensor  # (B, N, d)
    w: torch.Tensor  # (B, d)
    y: torch.Tensor  # (B, N) noisy targets


def draw_prompts(batch: int, n_points: int, d: int, tau: float, sigma: float, active_d=None,
                 generator: Optional[torch.Generator] = None, device=None,
                 dtype: torch.dtype = torch.float32) -> Prompts:
    """Prompts with the first ``active_d`` coordinates in use (all of them when None; may be a tensor)."""
    x = torch.randn(batch, n_points, d, generator=generator, device=device, dtype=dtype)
    w = tau * torch.randn(batch, d, generator=generator, device=device, dtype=dtype)
    eps = sigma * torch.randn(batch, n_points, generator=generator, device=device, dtype=dtype)
    if active_d is not None:
        x = x * (torch.arange(d, device=x.device) < active_d).to(dtype)
    return Prompts(x, w, torch.einsum("bnd,bd->bn", x, w) + eps)


def y_scale(tau: float, d) -> torch.Tensor | float:
    """Raw y -> network units: y / (tau sqrt(d))."""
    return 1.0 / (tau * (d.float().sqrt() if torch.is_tensor(d) else math.sqrt(d)))


def curriculum_value(step: torch.Tensor, start: int, inc: int, every: int, end: int) -> torch.Tensor:
    """min(end, start + inc * (step // every)); start = 0 means no curriculum (always ``end``)."""
    if start <= 0:
        return torch.full_like(step, end)
    return torch.clamp(start + inc * torch.div(step, every, rounding_mode="floor"), max=end)


def check_icl_config(icl) -> None:
    if icl.d < 1 or icl.n_points < 1:
        raise ValueError(f"icl.d and icl.n_points must be >= 1, got d={icl.d}, n_points={icl.n_points}")
    if icl.tau <= 0 or icl.sigma < 0:
        raise ValueError(f"icl.tau must be > 0 and icl.sigma >= 0, got tau={icl.tau}, sigma={icl.sigma}")
    if icl.d_start > icl.d or icl.points_start > icl.n_points:
        raise ValueError(f"icl.d_start={icl.d_start} / icl.points_start={icl.points_start} exceed "
                         f"icl.d={icl.d} / icl.n_points={icl.n_points}")
    if icl.curriculum_every < 1:
        raise ValueError(f"icl.curriculum_every must be >= 1, got {icl.curriculum_every}")


class ICLTrainData:
    """TrainData of the icl task: fresh prompts every step, scaled to network units."""

    num_examples = VIRTUAL_EPOCH

    def __init__(self, icl):
        check_icl_config(icl)
        self.icl = icl
        self.info = {"d": icl.d, "n_points": icl.n_points}
        self.step = torch.zeros((), dtype=torch.long)  # optimizer steps taken (the curriculum clock)

    def to(self, device: torch.device) -> "ICLTrainData":
        self.step = self.step.to(device)
        return self

    def set_step(self, step: int) -> None:
        """Called by the trainer before the first step (a resumed run starts mid-curriculum)."""
        self.step.fill_(step)

    def advance(self) -> None:
        """One optimizer step taken. Called by the trainer outside the compiled step: mutating the
        clock inside it made Inductor skip CUDA graphs (train.compile_mode=reduce-overhead)."""
        self.step.add_(1)

    def active(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(active dimension, active number of points) at the current step, as device tensors."""
        c = self.icl
        return (curriculum_value(self.step, c.d_start, c.d_inc, c.curriculum_every, c.d),
                curriculum_value(self.step, c.points_start, c.points_inc, c.curriculum_every, c.n_points))

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.icl
        active_d, active_points = self.active()
        p = draw_prompts(idx.shape[0], c.n_points, c.d, c.tau, c.sigma, active_d=active_d, device=idx.device)
        point_mask = (torch.arange(c.n_points, device=idx.device) < active_points).expand(idx.shape[0], -1)
        return {"x": p.x, "y": p.y * y_scale(c.tau, active_d), "point_mask": point_mask}


def load_icl_train_data(cfg, progress: bool = True) -> ICLTrainData:
    return ICLTrainData(cfg.icl)

"""A noise schedule with its logSNR shifted by a constant: the schedule of a coarser scale.

Average-pooling a noised image by ``factor`` x ``factor`` averages ``factor**2`` independent noise
values per pixel, which divides the noise variance by ``factor**2`` and keeps the signal: the pooled
copy of x_t sits at logSNR(t) + log(factor**2). A low-resolution stream noised with the *shifted*
schedule logSNR'(t) = logSNR(t) + log(factor**2) therefore has, at every t, the SNR that the pooled
high-resolution stream has at the same t: "equal t means equal SNR" across scales (the LIFT
per-scale schedule, and the resolution shift of Hoogeboom et al. 2023 read the other way).

The wrapper stays in its base's family, which the objectives rely on:
- flow matching (alpha + sigma = 1: the velocity target eps - x0 and its inversion assume it):
  alpha' = k alpha / (k alpha + sigma) with k = exp(shift / 2), a time warp of the same path;
- DDPM (alpha^2 + sigma^2 = 1: the v-prediction assumes it): alpha'^2 = sigmoid(logSNR + shift).
Pure noise (alpha = 0) and clean data (sigma = 0) are fixed points, so paths still run from 1 to 0.
"""
from __future__ import annotations

import math

import torch

from ditlab.diffusion.schedules import FlowSchedule, NoiseSchedule


def log_snr(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """log(alpha^2 / sigma^2) of ``schedule`` at ``t`` (+inf at t = 0, -inf at pure noise)."""
    alpha, sigma = schedule.alpha_sigma(t)
    return 2 * (torch.log(alpha.double()) - torch.log(sigma.double()))


class ShiftedSchedule(NoiseSchedule):
    def __init__(self, base: NoiseSchedule, log_snr_shift: float):
        if isinstance(base, ShiftedSchedule):  # shifts add up; keep one wrapper
            base, log_snr_shift = base.base, base.log_snr_shift + log_snr_shift
        self.base = base
        self.log_snr_shift = float(log_snr_shift)
        self.terminal_pure_noise = base.terminal_pure_noise
        self._ratio = math.exp(self.log_snr_shift / 2)  # multiplies alpha / sigma

    def alpha_sigma(self, t):
        alpha, sigma = self.base.alpha_sigma(t)
        a = alpha * self._ratio
        if isinstance(self.base, FlowSchedule):
            norm = a + sigma
        else:
            norm = (a * a + sigma * sigma).sqrt()
        return a / norm, sigma / norm

    # Training times and sampling grids are those of the base: t keeps its meaning across scales.
    def sample_time(self, shape, device, generator=None):
        return self.base.sample_time(shape, device, generator)

    def time_grid(self, steps: int) -> torch.Tensor:
        return self.base.time_grid(steps)

    def to(self, device) -> "ShiftedSchedule":
        self.base.to(device)
        return self


def scale_shift(factor: int) -> float:
    """The logSNR shift of a ``factor`` x average-pooled copy: log(factor^2) (log 4 for factor 2)."""
    return math.log(factor * factor)

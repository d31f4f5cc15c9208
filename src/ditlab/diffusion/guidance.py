"""Classifier-free guidance as a small wrapper around a denoiser.

The conditional and unconditional passes run as one batch of 2B. Guidance is applied to every
channel of every predicted stream, in (x0, eps) space; both are affine in the network output for a
fixed x_t, so guiding either is the same as guiding the raw prediction.

Guidance interval (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval improves
sample and distribution quality"): guidance is applied only while the noise-to-signal ratio
sigma/alpha of the noisiest stream lies in (lo, hi]; elsewhere the plain conditional model runs
(one pass, half the cost). Guiding at high noise pushes samples towards class modes and costs
diversity; at low noise it does little. The ratio is process-independent (flow: t / (1 - t)).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

# A conditional denoiser takes (x, t, drop) where drop is a (B,) bool "use the null condition".
CondDenoiser = Callable[[dict, dict, torch.Tensor], dict]


def guided(denoiser: CondDenoiser, scale: float, interval: Optional[tuple[float, float]] = None,
           schedules: Optional[dict] = None) -> Callable[[dict, dict], dict]:
    """scale = 1: the conditional model; 0: the unconditional one; > 1: guidance.

    ``interval`` = (lo, hi) limits guidance to noise-to-signal ratios sigma/alpha in (lo, hi];
    ``schedules`` maps stream names to their :class:`NoiseSchedule` (needed with an interval).
    """
    if interval is not None:
        lo, hi = interval
        if not 0 <= lo < hi:
            raise ValueError(f"cfg interval must satisfy 0 <= lo < hi, got ({lo}, {hi})")
        if schedules is None:
            raise ValueError("a cfg interval needs the streams' noise schedules")

    def plain(x, t):
        B = next(iter(x.values())).shape[0]
        drop = torch.full((B,), scale == 0.0, dtype=torch.bool, device=next(iter(x.values())).device)
        return denoiser(x, t, drop)

    if scale in (0.0, 1.0):
        return plain

    def in_interval(t) -> bool:
        # All samples of a sampler step share their noise levels, so one host read decides.
        ratio = 0.0
        for name, v in t.items():
            alpha, sigma = schedules[name].alpha_sigma(v.reshape(-1)[:1].float())
            ratio = max(ratio, float(sigma / alpha.clamp(min=1e-12)))
        return lo < ratio <= hi

    def cfg(x, t):
        if interval is not None and not in_interval(t):
            B = next(iter(x.values())).shape[0]
            return denoiser(x, t, torch.zeros(B, dtype=torch.bool, device=next(iter(x.values())).device))
        B = next(iter(x.values())).shape[0]
        device = next(iter(x.values())).device
        x2 = {k: torch.cat([v, v]) for k, v in x.items()}
        t2 = {k: torch.cat([v, v]) for k, v in t.items()}
        drop = torch.cat([torch.zeros(B, dtype=torch.bool, device=device), torch.ones(B, dtype=torch.bool, device=device)])
        both = denoiser(x2, t2, drop)
        out = {}
        for k, (x0, eps) in both.items():
            x0_c, x0_u = x0.chunk(2)
            eps_c, eps_u = eps.chunk(2)
            out[k] = (x0_u + scale * (x0_c - x0_u), eps_u + scale * (eps_c - eps_u))
        return out

    return cfg

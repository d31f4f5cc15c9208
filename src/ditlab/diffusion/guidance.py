"""Classifier-free guidance as a small wrapper around a denoiser.

The conditional and unconditional passes run as one batch of 2B. Guidance is applied to every
channel of every predicted stream, in (x0, eps) space; both are affine in the network output for a
fixed x_t, so guiding either is the same as guiding the raw prediction.
"""
from __future__ import annotations

from typing import Callable

import torch

# A conditional denoiser takes (x, t, drop) where drop is a (B,) bool "use the null condition".
CondDenoiser = Callable[[dict, dict, torch.Tensor], dict]


def guided(denoiser: CondDenoiser, scale: float) -> Callable[[dict, dict], dict]:
    """scale = 1: the conditional model; 0: the unconditional one; > 1: guidance."""

    def plain(x, t):
        B = next(iter(x.values())).shape[0]
        drop = torch.full((B,), scale == 0.0, dtype=torch.bool, device=next(iter(x.values())).device)
        return denoiser(x, t, drop)

    if scale in (0.0, 1.0):
        return plain

    def cfg(x, t):
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

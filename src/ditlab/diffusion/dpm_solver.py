"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", Algorithm 2), data-prediction form, for any Gaussian path x_t = alpha x0 + sigma eps.

With lambda = log(alpha / sigma) and h = lambda_s - lambda_t, one step t -> s is

    x_s = (sigma_s / sigma_t) x_t + (alpha_s - alpha_t sigma_s / sigma_t) D

(the usual "- alpha_s (e^{-h} - 1) D", with e^{-h} = alpha_t sigma_s / (sigma_t alpha_s) written out so
that no lambda is needed in it). D = x0_hat is the first-order step (= DDIM); the multistep correction
D = x0_hat + (x0_hat - x0_prev) / (2 r), r = h_prev / h, uses the x0_hat of the previous step and makes
the method second order at one network evaluation per step.

The ends of the path:
- alpha_t = 0 (flow matching at t = 1, lambda = -inf): the update reads (sigma_s / sigma_t) x_t + alpha_s
  x0_hat = alpha_s x0_hat + sigma_s eps_hat (eps_hat = x_t / sigma_t there), finite; the next step's
  h_prev is infinite, so its correction weight h / (2 h_prev) is 0 and that step is first order too.
- sigma_s = 0 (the step into t = 0, lambda = +inf): first order, x_s = alpha_s x0_hat, as in the paper.
"""
from __future__ import annotations

from typing import Optional

import torch

from ditlab.diffusion.schedules import NoiseSchedule


def _lambda(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log(alpha / sigma) in float64: -inf at alpha = 0, +inf at sigma = 0."""
    return torch.log(alpha.double()) - torch.log(sigma.double())


def dpmpp_2m_update(x: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, s: torch.Tensor, schedule: NoiseSchedule,
                    prev: Optional[tuple[torch.Tensor, torch.Tensor]]):
    """One step t -> s of one stream. ``prev``: (x0_hat, lambda) of this stream's previous step, or None
    (first step, or the stream was held in between: restart at first order).

    Returns (x_s, the (x0_hat, lambda_t) to hand to the next step).
    """
    def bcast(v):
        return v.view(-1, *([1] * (x.dim() - 1)))

    a_t, s_t = schedule.alpha_sigma(t)
    a_s, s_s = schedule.alpha_sigma(s)
    lam_t, lam_s = _lambda(a_t, s_t), _lambda(a_s, s_s)
    d = x0
    if prev is not None:
        x0_prev, lam_prev = prev
        h, h_prev = lam_s - lam_t, lam_t - lam_prev
        # 1 / (2 r) = h / (2 h_prev); 0 where the previous step started at pure noise (h_prev = inf) and
        # where this step ends at clean data (sigma_s = 0: the last step stays first order).
        c = torch.where(torch.isfinite(h) & torch.isfinite(h_prev), h / (2 * h_prev), torch.zeros_like(h))
        d = x0 + bcast(c.float()) * (x0 - x0_prev)
    ratio = s_s / s_t  # sigma_t > 0: a moving stream starts above t = 0
    out = bcast(ratio) * x + bcast(a_s - a_t * ratio) * d
    return out, (x0, lam_t)

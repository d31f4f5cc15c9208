"""Min-SNR-gamma loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting").

The idea is stated on the x0 error: weigh ||x0_hat - x0||^2 by min(SNR, gamma), SNR = alpha^2 / sigma^2,
so that low-noise levels (huge SNR) stop dominating. For a target other than x0 the weight is whatever
turns that target's squared error into min(SNR, gamma) ||x0_hat - x0||^2. At a fixed x_t = alpha x0 +
sigma eps the errors are tied (alpha dx0 + sigma deps = 0), which gives:

  target                    squared error in x0 units       weight
  eps                       SNR ||dx0||^2                   min(SNR, gamma) / SNR
  x0                        ||dx0||^2                       min(SNR, gamma)
  v = alpha eps - sigma x0  (SNR + 1) ||dx0||^2             min(SNR, gamma) / (SNR + 1)   (alpha^2 + sigma^2 = 1)
  velocity = eps - x0       ((alpha + sigma) / sigma)^2 ||dx0||^2 = (sqrt(SNR) + 1)^2 ||dx0||^2
                                                            min(SNR, gamma) / (sqrt(SNR) + 1)^2

The flow velocity is "v up to scale" in the sense that both are rotations of (x0, eps), but the scale
differs per t ((alpha + sigma)^2 against alpha^2 + sigma^2, a factor in [1, 2]); we use the exact factor,
so every parameterisation gets the same effective x0 weight and the options are comparable.
"""
from __future__ import annotations

import torch


def min_snr_weight(alpha: torch.Tensor, sigma: torch.Tensor, target: str, gamma: float) -> torch.Tensor:
    """Weight of the squared error of ``target`` (eps, x0, v, velocity) at (alpha, sigma), fp32, finite.

    Elements at sigma = 0 (clean tokens) get a finite weight; the objective masks them out anyway.
    """
    alpha, sigma = alpha.float(), sigma.float()
    snr = alpha**2 / (sigma**2).clamp(min=1e-20)  # finite where sigma = 0; 0 at pure noise
    capped = snr.clamp(max=gamma)
    if target == "x0":
        return capped
    if target == "eps":
        return (gamma / snr).clamp(max=1.0)  # min(SNR, gamma) / SNR without 0 / 0 at pure noise
    if target == "v":
        return capped / (snr + 1)
    if target == "velocity":
        return capped / (snr.sqrt() + 1) ** 2
    raise ValueError(f"no Min-SNR weight for prediction target {target!r}")

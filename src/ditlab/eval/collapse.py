"""Posterior-collapse statistics: does a conditional model still use its noise?

A model that ignores its noise ("posterior collapse", user note 002) returns nearly the same
sample for every seed under one condition. Given features of M conditions x K seeds, the total
variance splits exactly (law of total variance, equal group sizes) into

    within  = mean over conditions of the variance across seeds      (what the noise buys)
    between = variance across conditions of the per-condition means  (what the condition buys)

and ``seed_share = within / (within + between)`` is the fraction due to the noise. A collapsed
model has seed_share near 0; an unconditional one near 1. Features may be pixels or Inception
pool features; the verdict threshold is a setting of the diagnostic, reported next to the numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class SpreadStats:
    within: float  # mean squared distance of a seed's sample to its condition's mean
    between: float  # mean squared distance of a condition's mean to the grand mean
    seed_share: float  # within / (within + between)
    pairwise_seed_distance: float  # mean L2 distance between two seeds of one condition
    num_conditions: int
    num_seeds: int

    def as_dict(self) -> dict:
        return asdict(self)


def spread_stats(features: torch.Tensor) -> SpreadStats:
    """features: (M conditions, K seeds, ...) -> spread statistics (computed in float64)."""
    if features.dim() < 3:
        raise ValueError(f"features must have shape (conditions, seeds, ...), got {tuple(features.shape)}")
    M, K = features.shape[:2]
    if M < 2 or K < 2:
        raise ValueError(f"need at least 2 conditions and 2 seeds, got {M} conditions x {K} seeds")
    x = features.reshape(M, K, -1).double()
    cond_mean = x.mean(dim=1, keepdim=True)  # (M, 1, D)
    within = (x - cond_mean).square().sum(-1).mean().item()
    between = (cond_mean.squeeze(1) - x.mean(dim=(0, 1))).square().sum(-1).mean().item()
    pairwise = torch.cdist(x, x)  # (M, K, K)
    off_diagonal = pairwise.sum() / (M * K * (K - 1))
    total = within + between
    return SpreadStats(within, between, within / total if total > 0 else 0.0, off_diagonal.item(), M, K)


def collapse_verdict(stats: SpreadStats, threshold: float = 0.05) -> dict:
    """JSON-ready verdict: collapsed when the noise explains less than ``threshold`` of the variance."""
    return {"collapsed": stats.seed_share < threshold, "threshold": threshold, **stats.as_dict()}

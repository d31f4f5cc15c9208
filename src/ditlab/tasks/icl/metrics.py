"""Error and calibration metrics of sampled predictive distributions against the exact one.

Shapes: samples (P, S, N) = S draws for each of N queries of P prompts; exact predictive mean and
variance (P, N); targets y (P, N). Everything is numpy float64.

Interval coverage is measured against the exact predictive: the model's central interval [lo, hi]
for a query covers the true y with probability F(hi) - F(lo), F the exact predictive CDF (the true
y of a query *is* drawn from it, because prompts are drawn from the prior). Averaging that
probability over prompts estimates the usual "fraction of targets inside their interval" without
the extra noise of one draw of y per prompt. The empirical fraction is reported beside it.

Intervals come from sample quantiles at plotting positions p (S + 1) (numpy's "weibull" method): the
exact-CDF mass between order statistics r and s of S draws is (s - r) / (S + 1) on average, so these
intervals hold their nominal level for a perfect sampler at any S (linear interpolation between
positions p (S - 1) would under-cover by ~2 points at 95% with S = 100).
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr

LEVELS = (0.5, 0.8, 0.9, 0.95)
MIN_VARIANCE = 1e-10  # exact predictive variances below this (noiseless, k >= d) have no calibration


def bootstrap_mean_band(values: np.ndarray, rng: np.random.Generator, num: int = 1000,
                        level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap band (over prompts, axis 0) of the mean of values (P, ...)."""
    P = values.shape[0]
    means = np.stack([values[rng.integers(0, P, P)].mean(0) for _ in range(num)])
    a = (1 - level) / 2
    return np.quantile(means, a, axis=0), np.quantile(means, 1 - a, axis=0)


def bootstrap_ratio_band(num_values: np.ndarray, den_values: np.ndarray, rng: np.random.Generator,
                         num: int = 1000, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Paired bootstrap band of mean(num) / mean(den) over prompts (axis 0)."""
    P = num_values.shape[0]
    ratios = []
    for _ in range(num):
        idx = rng.integers(0, P, P)
        ratios.append(num_values[idx].mean(0) / den_values[idx].mean(0))
    a = (1 - level) / 2
    return np.quantile(np.stack(ratios), a, axis=0), np.quantile(np.stack(ratios), 1 - a, axis=0)


def central_interval(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the central ``level`` interval of the draws along axis 1: (P, N) each."""
    a = (1 - level) / 2
    lo, hi = np.quantile(samples, [a, 1 - a], axis=1, method="weibull")
    return lo, hi


def _valid(var: np.ndarray) -> np.ndarray:
    return var > MIN_VARIANCE


def exact_coverage(samples: np.ndarray, mean: np.ndarray, var: np.ndarray,
                   levels=LEVELS) -> dict[float, np.ndarray]:
    """level -> (N,) mean exact probability mass of the model's central interval (NaN where var = 0)."""
    valid = _valid(var)
    std = np.sqrt(np.where(valid, var, 1.0))
    out = {}
    for level in levels:
        lo, hi = central_interval(samples, level)
        mass = ndtr((hi - mean) / std) - ndtr((lo - mean) / std)
        out[level] = _masked_mean(mass, valid)
    return out


def empirical_coverage(samples: np.ndarray, y: np.ndarray, levels=LEVELS) -> dict[float, np.ndarray]:
    """level -> (N,) fraction of targets inside the model's central interval."""
    out = {}
    for level in levels:
        lo, hi = central_interval(samples, level)
        out[level] = ((y >= lo) & (y <= hi)).mean(0)
    return out


def exact_pit(samples: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """F(draw) for every draw, F the exact predictive CDF: uniform on (0, 1) iff the sampler is exact.
    Flattened over the queries with a positive exact variance."""
    valid = _valid(var)
    z = (samples - mean[:, None]) / np.sqrt(np.where(valid, var, 1.0))[:, None]
    return ndtr(z)[np.broadcast_to(valid[:, None], samples.shape)]


def pit_histogram(u: np.ndarray, bins: int = 10) -> np.ndarray:
    """Relative frequency per bin of [0, 1] (each 1 / bins for a uniform u)."""
    counts, _ = np.histogram(u, bins=bins, range=(0.0, 1.0))
    return counts / max(len(u), 1)


def crps_ensemble(samples: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS (P, N) of the S-sample ensembles at targets y, the "fair" estimator
    E|X - y| - E|X - X'| / 2 with the pair term averaged over distinct pairs (unbiased for the
    CRPS of the distribution the samples come from)."""
    S = samples.shape[1]
    first = np.abs(samples - y[:, None]).mean(1)
    srt = np.sort(samples, axis=1)
    rank_weight = (2 * np.arange(1, S + 1) - S - 1).reshape(1, S, 1)
    pair_sum = 2 * (rank_weight * srt).sum(1)  # sum over all ordered pairs of |X_i - X_j|
    return first - pair_sum / (2 * S * (S - 1))


def crps_gaussian(mean: np.ndarray, var: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Closed-form CRPS of N(mean, var) at y (|y - mean| when var = 0)."""
    std = np.sqrt(np.maximum(var, 0.0))
    safe = np.where(std > 0, std, 1.0)
    z = (y - mean) / safe
    pdf = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    value = safe * (z * (2 * ndtr(z) - 1) + 2 * pdf - 1 / np.sqrt(np.pi))
    return np.where(std > 0, value, np.abs(y - mean))


def log_variance_ratio(samples: np.ndarray, var: np.ndarray) -> np.ndarray:
    """(N,) mean over prompts of log(sample variance / exact variance) (NaN where var = 0)."""
    valid = _valid(var)
    s2 = samples.var(axis=1, ddof=1)
    ratio = np.log(np.maximum(s2, 1e-30) / np.where(valid, var, 1.0))
    return _masked_mean(ratio, valid)


def _masked_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    count = valid.sum(0)
    total = np.where(valid, values, 0.0).sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)

"""The cheapest monotone path through a two-scale noise-level grid under a step budget.

Nodes are index pairs (i, j) on an (n x n) grid, i the high-resolution and j the low-resolution
level index: index 0 is pure noise, index n - 1 is clean (t = 0). A path starts at (0, 0), ends at
(n - 1, n - 1) and moves monotonically: each step goes from (i, j) to some (i2, j2) with i2 >= i,
j2 >= j, (i2, j2) != (i, j) -- any distance, so a budget smaller than 2 (n - 1) is still feasible.
One step is one network evaluation (at its start node).

Edge cost (the ELBO decomposition, Kingma et al. 2021): the diffusion loss of a step from logSNR
lambda to lambda' with the x0 prediction x0_hat made at the step's start is
    1/2 (SNR(lambda') - SNR(lambda)) * ||x0 - x0_hat||^2,
summed over the scales that move. ``w_hi[i, j]`` / ``w_lo[i, j]`` are those expected squared errors
(summed over a scale's pixels) measured at node (i, j); the "hi" planner passes w_lo = 0.
"""
from __future__ import annotations

import numpy as np


def elbo_edge_costs(snr_hi: np.ndarray, snr_lo: np.ndarray, w_hi: np.ndarray, w_lo: np.ndarray) -> np.ndarray:
    """cost[i, j, i2, j2] (n, n, n, n) of the step (i, j) -> (i2, j2); inf where it is not a step.

    ``snr_*`` (n,): the SNR of each level index, non-decreasing (index 0 = noise); ``w_*`` (n, n):
    the squared x0 error per node.
    """
    snr_hi, snr_lo = np.asarray(snr_hi, np.float64), np.asarray(snr_lo, np.float64)
    w_hi, w_lo = np.asarray(w_hi, np.float64), np.asarray(w_lo, np.float64)
    n = len(snr_hi)
    if snr_lo.shape != (n,) or w_hi.shape != (n, n) or w_lo.shape != (n, n):
        raise ValueError(f"expected snr_hi, snr_lo of shape ({n},) and w_hi, w_lo of shape ({n}, {n}); got "
                         f"{snr_lo.shape}, {w_hi.shape}, {w_lo.shape}")
    if (np.diff(snr_hi) < 0).any() or (np.diff(snr_lo) < 0).any():
        raise ValueError("SNR must not decrease along the level index (index 0 = pure noise)")
    gain_hi = snr_hi[None, :] - snr_hi[:, None]  # (i, i2): SNR gained moving i -> i2
    gain_lo = snr_lo[None, :] - snr_lo[:, None]  # (j, j2)
    cost = 0.5 * (w_hi[:, :, None, None] * gain_hi[:, None, :, None]
                  + w_lo[:, :, None, None] * gain_lo[None, :, None, :])
    idx = np.arange(n)
    forward_hi = idx[None, :] >= idx[:, None]  # (i, i2)
    forward_lo = idx[None, :] >= idx[:, None]
    valid = forward_hi[:, None, :, None] & forward_lo[None, :, None, :]
    valid &= ~np.eye(n * n, dtype=bool).reshape(n, n, n, n)  # staying put is not a step
    return np.where(valid, cost, np.inf)


def plan_path(cost: np.ndarray, budget: int) -> tuple[list[tuple[int, int]], float]:
    """The cheapest path from (0, 0) to (n-1, n-1) with at most ``budget`` steps, by dynamic programming.

    Returns (nodes including both ends, total cost). Among equally cheap paths the one with the
    fewest steps wins. best[s, v] = cheapest way to reach node v in exactly s steps; the table has
    (budget + 1) x n^2 entries and each row costs one (n^2 x n^2) min.
    """
    cost = np.asarray(cost, np.float64)
    n = cost.shape[0]
    if cost.shape != (n, n, n, n):
        raise ValueError(f"cost must have shape (n, n, n, n), got {cost.shape}")
    if budget < 1:
        raise ValueError(f"the step budget must be >= 1, got {budget}")
    if n < 2:
        raise ValueError("the grid needs at least two levels (noise and clean)")
    P = n * n
    C = cost.reshape(P, P)
    best = np.full((budget + 1, P), np.inf)
    came_from = np.full((budget + 1, P), -1, dtype=np.int64)
    best[0, 0] = 0.0
    for s in range(1, budget + 1):
        total = best[s - 1][:, None] + C  # (source, target)
        came_from[s] = total.argmin(axis=0)
        best[s] = total[came_from[s], np.arange(P)]
    end = P - 1
    steps = int(np.argmin(best[1:, end])) + 1  # argmin takes the first: the fewest steps among ties
    if not np.isfinite(best[steps, end]):
        raise ValueError(f"no path within {budget} steps")
    nodes, v = [end], end
    for s in range(steps, 0, -1):
        v = int(came_from[s, v])
        nodes.append(v)
    return [divmod(v, n) for v in reversed(nodes)], float(best[steps, end])


def path_cost(cost: np.ndarray, nodes: list[tuple[int, int]]) -> float:
    """Total cost of a node sequence under ``cost`` (inf if a move is not a step)."""
    return float(sum(cost[a + b] for a, b in zip(nodes[:-1], nodes[1:])))

"""Sampling paths through the (t_hi, t_lo) grid of a two-scale (LIFT) model, as TimePaths.

Every builder returns a :class:`ditlab.diffusion.paths.TimePath` over the streams (hi, lo), so
every sampler runs every path. Paths start at t = 1 for both scales and end at t = 0 for both; a
step moves one scale or both; ``steps`` is the number of path steps (network evaluations of a
one-evaluation sampler, :func:`ditlab.diffusion.samplers.count_nfe` counts Heun's).

Names (:func:`build_lift_path`):

- ``diagonal``: t_lo = t_hi on the schedule's own grid (single-scale sampling of both).
- ``lo-first`` / ``hi-first``: an L-path, one scale all the way to 0 (half the steps), then the other.
- ``shift:D`` (-1 <= D <= 1): a shifted diagonal, the low resolution D ahead in grid progress
  (D < 0: behind); ``shift:1`` is lo-first, ``shift:0`` the diagonal.
- ``lo-fixed`` / ``lo-random``: probes of whether the model uses the low resolution (user note 004,
  experiment 4): the low-resolution level follows the diagonal (what the network is told) but its
  values are never denoised, kept at the starting noise draw (fixed) or redrawn as fresh noise before
  every step (random), through ``TimePath.hold``. The high resolution is generated as on the diagonal.
- ``lo-oracle``: the low resolution held clean (t_lo = 0) at the pooled copy of given real images,
  the high resolution generated on its grid: super-resolution, the only way to sample a model trained
  with lift.train_mode=clean_lo (an upper bound, not generation; note 004, experiment 3).
- ``cascade``: the same (t_hi, t_lo) rows as lo-oracle, the low resolution held clean at the samples
  of a separate single-scale model trained at the low resolution (``ditlab sample --lo-run RUN_LO``;
  ditlab.tasks.lift.cascade): note 004's experiment 3 generating "the 32x32 image with an
  independent model first".
- ``dp-hi`` / ``dp-total``: the cheapest path under the step budget by dynamic programming over a
  grid of measured per-node errors (ditlab.tasks.lift.planner, ditlab.tasks.lift.errors), with the
  ELBO cost of the high resolution only, or of both scales.
"""
from __future__ import annotations

import numpy as np
import torch

from ditlab.tasks.lift.planner import elbo_edge_costs, plan_path
from ditlab.diffusion.paths import TimePath
from ditlab.diffusion.schedules import DDPMSchedule, NoiseSchedule

PATH_NAMES = ("diagonal", "lo-first", "hi-first", "shift:D", "lo-fixed", "lo-random", "lo-oracle", "cascade",
              "dp-hi", "dp-total")
DP_PATHS = ("dp-hi", "dp-total")
# Paths whose low resolution is given, held clean (t_lo = 0), and the condition that gives it: lo-oracle the
# real high-resolution images it pools (--data), cascade the low-resolution samples of another run (--lo-run).
CLEAN_LO_PATHS = {"lo-oracle": "images", "cascade": "lowres"}
PATH_NEEDS = {"lo-oracle": "--data DATASET", "cascade": "--lo-run RUN_LO", "dp-hi": "RUN/lift_errors.npz",
              "dp-total": "RUN/lift_errors.npz"}


def _base(schedule: NoiseSchedule) -> NoiseSchedule:
    return getattr(schedule, "base", schedule)  # a ShiftedSchedule shares its base's grid


def progress_to_times(schedule: NoiseSchedule, progress: np.ndarray) -> np.ndarray:
    """Grid progress in [0, 1] (0 = start, 1 = clean) -> noise levels, following the schedule's own
    spacing of sampling steps (flow shift, DDPM trailing grid); DDPM levels snap to its k / T."""
    base = _base(schedule)
    fine_steps = min(getattr(base, "num_timesteps", 1000), 1000)
    fine = schedule.time_grid(fine_steps).double().numpy()  # (M + 1,), 1 -> 0
    t = np.interp(np.clip(progress, 0, 1) * fine_steps, np.arange(fine_steps + 1), fine)
    if isinstance(base, DDPMSchedule):
        t = np.round(t * base.num_timesteps) / base.num_timesteps
    return t


def _path(rows: np.ndarray, hi: str, lo: str, hold: dict | None = None) -> TimePath:
    """(K + 1, 2) rows of (t_hi, t_lo) -> TimePath, dropping rows equal to the one before (no-op steps)."""
    rows = np.asarray(rows, np.float64)
    keep = np.ones(len(rows), dtype=bool)
    keep[1:] = (np.diff(rows, axis=0) != 0).any(axis=1)
    return TimePath(torch.from_numpy(rows[keep]), [hi, lo], dict(hold or {}))


def diagonal_path(schedule: NoiseSchedule, steps: int, hi: str, lo: str) -> TimePath:
    grid = schedule.time_grid(steps).double().numpy()
    return _path(np.stack([grid, grid], axis=1), hi, lo)


def one_scale_first_path(schedule: NoiseSchedule, steps: int, hi: str, lo: str, first: str) -> TimePath:
    """L-path: ``first`` ("lo" or "hi") goes from 1 to 0 in steps // 2 steps, the other after it."""
    if steps < 2:
        raise ValueError(f"an L-path needs at least 2 steps (one per scale), got {steps}")
    a = schedule.time_grid(steps // 2).double().numpy()  # the first scale, 1 -> 0
    b = schedule.time_grid(steps - steps // 2).double().numpy()[1:]  # the second, after the first
    if first == "lo":
        rows = np.concatenate([np.stack([np.ones_like(a), a], 1), np.stack([b, np.zeros_like(b)], 1)])
    elif first == "hi":
        rows = np.concatenate([np.stack([a, np.ones_like(a)], 1), np.stack([np.zeros_like(b), b], 1)])
    else:
        raise ValueError(f"first must be 'lo' or 'hi', got {first!r}")
    return _path(rows, hi, lo)


def shifted_diagonal_path(schedule: NoiseSchedule, steps: int, offset: float, hi: str, lo: str) -> TimePath:
    """The low resolution ``offset`` ahead of the high one in grid progress (behind when negative);
    progress runs linearly from 0 to 1 + |offset| over ``steps`` steps."""
    if not -1.0 <= offset <= 1.0:
        raise ValueError(f"shift:D needs -1 <= D <= 1, got {offset}")
    p = np.linspace(0.0, 1.0 + abs(offset), steps + 1)
    lead, lag = np.clip(p, 0, 1), np.clip(p - abs(offset), 0, 1)
    p_hi, p_lo = (lag, lead) if offset >= 0 else (lead, lag)
    return _path(np.stack([progress_to_times(schedule, p_hi), progress_to_times(schedule, p_lo)], axis=1), hi, lo)


def held_lo_path(schedule: NoiseSchedule, steps: int, hi: str, lo: str, how: str) -> TimePath:
    """The diagonal with the low resolution held ("fixed" or "fresh" noise; see the module docstring)."""
    diag = diagonal_path(schedule, steps, hi, lo)
    return TimePath(diag.times, diag.streams, {lo: how})


def capped_snr(schedule: NoiseSchedule, levels: np.ndarray, snr_max: float) -> np.ndarray:
    """(alpha / sigma)^2 at ``levels``, capped at snr_max (t = 0 has infinite SNR)."""
    alpha, sigma = schedule.alpha_sigma(torch.as_tensor(levels, dtype=torch.float64).float())
    alpha, sigma = alpha.double().numpy(), sigma.double().numpy()
    ratio = np.divide(alpha, sigma, out=np.full_like(alpha, np.inf), where=sigma > 0)
    return np.minimum(ratio**2, snr_max)


def dp_path(errors, schedule_hi: NoiseSchedule, schedule_lo: NoiseSchedule, steps: int, variant: str,
            hi: str, lo: str, snr_max: float = 1.0e4) -> TimePath:
    """The ELBO-cheapest path under ``steps`` steps over a measured error grid.

    ``errors`` (ditlab.tasks.lift.errors.NodeErrors): ``levels`` (n,) from 1 to 0, ``mse_hi`` /
    ``mse_lo`` (n, n) mean squared x0 errors per pixel at node (t_hi = levels[i], t_lo = levels[j]),
    ``dims_hi`` / ``dims_lo`` the pixels (x channels) per scale, which turn a mean into the ELBO's sum.
    ``variant``: "hi" (the high resolution's cost only) or "total".
    """
    if variant not in ("hi", "total"):
        raise ValueError(f"the DP variant must be 'hi' or 'total', got {variant!r}")
    levels = np.asarray(errors.levels, np.float64)
    w_hi = np.asarray(errors.mse_hi, np.float64) * errors.dims_hi
    w_lo = np.asarray(errors.mse_lo, np.float64) * errors.dims_lo if variant == "total" else np.zeros_like(w_hi)
    cost = elbo_edge_costs(capped_snr(schedule_hi, levels, snr_max), capped_snr(schedule_lo, levels, snr_max),
                           w_hi, w_lo)
    nodes, _ = plan_path(cost, steps)
    rows = np.array([[levels[i], levels[j]] for i, j in nodes])
    return _path(rows, hi, lo)


def build_lift_path(name: str, schedule_hi: NoiseSchedule, steps: int, hi: str, lo: str, errors=None,
                    schedule_lo: NoiseSchedule | None = None, snr_max: float = 1.0e4) -> TimePath:
    """A path by name (module docstring). The dp-* paths need ``errors`` and the low resolution's schedule."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if name == "diagonal":
        return diagonal_path(schedule_hi, steps, hi, lo)
    if name in ("lo-first", "hi-first"):
        return one_scale_first_path(schedule_hi, steps, hi, lo, first=name.split("-")[0])
    if name.startswith("shift:"):
        try:
            offset = float(name.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"path {name!r}: write shift:D with a number D in [-1, 1], e.g. shift:0.3") from None
        return shifted_diagonal_path(schedule_hi, steps, offset, hi, lo)
    if name in ("lo-fixed", "lo-random"):
        return held_lo_path(schedule_hi, steps, hi, lo, "fixed" if name == "lo-fixed" else "fresh")
    if name in CLEAN_LO_PATHS:
        grid = schedule_hi.time_grid(steps).double().numpy()
        return _path(np.stack([grid, np.zeros_like(grid)], axis=1), hi, lo)
    if name in DP_PATHS:
        if errors is None:
            raise ValueError(f"path {name} needs the model's per-node errors: run `ditlab lift errors RUN` first "
                             "(it writes RUN/lift_errors.npz)")
        return dp_path(errors, schedule_hi, schedule_lo or schedule_hi, steps, name.split("-")[1], hi, lo, snr_max)
    raise ValueError(f"unknown LIFT path {name!r}; choose one of {', '.join(PATH_NAMES)}")

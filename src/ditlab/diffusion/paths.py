"""Time paths: for each sampler step, one noise level per stream.

A single-stream sampler run is the special case of one column. Multi-stream paths (diagonal,
L-shaped, planned) are built from the same object, so every sampler accepts every path.

``hold`` marks streams whose values the sampler does not integrate although their level (what the
network is told) follows the path: "fixed" keeps the starting draw for the whole run, "fresh"
replaces it by new standard-normal noise from the per-sample RNG before every step. They probe
whether a model uses a stream at all (ditlab.tasks.lift.paths: lo-fixed, lo-random).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ditlab.diffusion.schedules import shift_time


@dataclass
class TimePath:
    times: torch.Tensor  # (K + 1, S) float64, row i = noise levels before step i
    streams: list[str]
    hold: dict[str, str] = field(default_factory=dict)  # stream -> "fixed" | "fresh" (module docstring)

    def __post_init__(self):
        self.times = torch.as_tensor(self.times, dtype=torch.float64).cpu()
        if self.times.dim() != 2 or self.times.shape[1] != len(self.streams):
            raise ValueError(f"path times must have shape (K + 1, {len(self.streams)}), got {tuple(self.times.shape)}")
        if self.times.shape[0] < 2:
            raise ValueError("a path needs at least one step (two rows of times)")
        if (self.times[1:] > self.times[:-1]).any():
            raise ValueError("noise levels along a path must not increase")
        for name, how in self.hold.items():
            if name not in self.streams or how not in ("fixed", "fresh"):
                raise ValueError(f"path hold {name!r}: {how!r} must name one of the streams {self.streams} "
                                 "and be 'fixed' or 'fresh'")

    @property
    def num_steps(self) -> int:
        return self.times.shape[0] - 1


def single_stream_path(name: str, grid: torch.Tensor) -> TimePath:
    """A one-stream path from a decreasing 1-D grid of noise levels."""
    return TimePath(torch.as_tensor(grid, dtype=torch.float64)[:, None], [name])


def with_fixed_streams(path: TimePath, fixed: dict[str, float]) -> TimePath:
    """Add streams held at a constant noise level (e.g. a clean condition at 0) to a path."""
    cols = [path.times] + [torch.full((path.times.shape[0], 1), float(v), dtype=torch.float64) for v in fixed.values()]
    return TimePath(torch.cat(cols, dim=1), path.streams + list(fixed))


def shift_path(path: TimePath, shift: float) -> TimePath:
    """``sample.time_shift``: warp every level of the streams that move along ``path`` by SD3's shift
    t' = s t / (1 + (s - 1) t) (ditlab.diffusion.schedules.shift_time).

    Streams whose level is the same on every row (a clean condition at 0, an augmentation level, a
    stream held at 1) keep their level: it is an input, not a step of the grid. The warp is monotone
    and fixes 0 and 1, so which levels change at which step (and the NFE count) stays the same; on a
    single stream from the uniform grid it gives FlowSchedule(shift=s).time_grid.
    """
    if shift == 1.0:
        return path
    times = path.times.clone()
    moving = (times != times[:1]).any(dim=0)  # (S,) a column that changes somewhere along the path
    times[:, moving] = shift_time(times[:, moving], float(shift))
    return TimePath(times, list(path.streams), dict(path.hold))

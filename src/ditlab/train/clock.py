"""The wall clock of time-limited runs."""
from __future__ import annotations

import contextlib
import time

import torch


class TrainingClock:
    """Wall clock of the timed part of a run: starts after `untimed` steps, includes everything after
    except what runs inside :meth:`paused` (evaluation during training: measuring is not training, and a
    time-to-FID curve must not depend on how often it is measured).

    The host runs at most a step or two ahead of the GPU; when the host clock passes the limit the
    device is synchronised and the clock read again, so the reported time covers the finished work.
    """

    def __init__(self, limit: float, untimed: int, device: torch.device, offset: float = 0.0):
        # offset: timed seconds of the earlier segments of a resumed run, so that the limit is the run's
        # (a resumed time-limited run gets what is left of its budget, not a new one).
        self.limit, self.untimed, self.device, self.offset = limit, untimed, device, float(offset)
        self.start: float | None = None
        self.start_step = 0
        self.timed_steps = 0
        self.excluded = 0.0  # seconds spent inside paused()
        self._paused_at: float | None = None  # inside paused(): when it began (the clock reads that moment)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def tick(self, steps_done: int) -> bool:
        """Call after each step; True once the time limit is exhausted."""
        if self.start is None:
            if steps_done < self.untimed:
                return False
            self._sync()
            self.start, self.start_step = time.perf_counter(), steps_done
        self.timed_steps = steps_done - self.start_step
        if self.limit > 0 and self.used() >= self.limit:
            self._sync()
            return self.used() >= self.limit
        return False

    def used(self) -> float:
        """Timed seconds so far by the host clock (no device sync), earlier segments included. Inside
        :meth:`paused` the clock stands still: an evaluation that reads it after its own work (the seconds of a
        time-to-FID curve) gets the training time at which it began, not that plus its own duration."""
        if self.start is None:
            return self.offset
        now = time.perf_counter() if self._paused_at is None else self._paused_at
        return self.offset + now - self.start - self.excluded

    def elapsed(self) -> float:
        if self.start is not None:
            self._sync()
        return self.used()

    @contextlib.contextmanager
    def paused(self):
        """Work inside does not count: the device is synchronised on entry (the training queued before is
        counted) and on exit (the paused work is not)."""
        if self.start is None:
            yield
            return
        self._sync()
        t0 = self._paused_at = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self._paused_at = None
            self.excluded += time.perf_counter() - t0

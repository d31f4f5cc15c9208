"""Graceful stop: SIGTERM / SIGINT set a flag; the trainer saves at the next step boundary.

Exit codes (documented in the README): 0 finished; 128 + signal number (143 SIGTERM, 130 SIGINT)
after a clean save on a signal; 2 on a non-finite loss (nothing is saved over the last checkpoint).
A second Ctrl-C while saving is ignored: interrupting the save is what the flag exists to avoid.
"""
from __future__ import annotations

import signal
import threading


class StopRequest:
    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            print(f"\nditlab: received {signal.Signals(signum).name}; saving a checkpoint at the end of this step",
                  flush=True)
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum is not None else 0

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

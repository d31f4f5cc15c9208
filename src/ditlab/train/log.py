"""Run metrics: one JSON line per ``log`` call in ``RUN/metrics.jsonl``, plus TensorBoard.

The JSONL file is the record of truth (greppable, loads with pandas, survives without TensorBoard);
TensorBoard is for watching. A resumed run calls :meth:`RunLogger.truncate_after` with the resume
step first, so steps logged after the last checkpoint by the crashed run are not duplicated. On
non-zero DDP ranks construct it with ``enabled=False``: every method then returns at once and
nothing is opened or imported.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np


class RunLogger:
    """Appends metrics to ``RUN/metrics.jsonl`` and ``RUN/tb``; usable as a context manager."""

    def __init__(self, run_dir, enabled: bool = True, tensorboard: bool = True):
        self.enabled, self.tensorboard = enabled, tensorboard
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = None
        self._writer = None  # SummaryWriter, created on first use so truncate_after can set purge_step
        self._purge_step: int | None = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")

    def _tb(self):
        if self._writer is None and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import; only where logging happens
            self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self._purge_step, flush_secs=30)
        return self._writer

    def log(self, step: int, metrics: dict) -> None:
        """Append ``{"step", "time", **metrics}`` (flushed) and write numeric values as TB scalars.

        Tensors and numpy scalars become floats; NaN/inf are written as JSON ``NaN``/``Infinity``
        (Python's json reads them back), since a diverging loss is worth seeing as it is.
        """
        if not self.enabled:
            return
        if "step" in metrics or "time" in metrics:
            raise ValueError("metric names 'step' and 'time' are reserved")
        record: dict = {"step": int(step), "time": round(time.time(), 3)}
        for k, v in metrics.items():
            if hasattr(v, "item"):  # torch tensor / numpy scalar (0-dim)
                v = v.item()
            record[k] = v if isinstance(v, str) else float(v)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        writer = self._tb()
        if writer is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, float) and not math.isnan(v):
                    writer.add_scalar(k, v, int(step))

    def log_image(self, step: int, tag: str, image) -> None:
        """Add an image to TensorBoard: a file path, or uint8 HWC (or HW) array/tensor."""
        if not self.enabled or self._tb() is None:
            return
        if isinstance(image, (str, os.PathLike)):
            from PIL import Image

            with Image.open(image) as im:
                image = np.asarray(im.convert("RGB"))
        elif hasattr(image, "detach"):
            image = image.detach().cpu().numpy()
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise TypeError(f"log_image wants uint8 pixels, got {image.dtype} (see ditlab.imageio.to_uint8)")
        self._writer.add_image(tag, image, int(step), dataformats="HW" if image.ndim == 2 else "HWC")

    def truncate_after(self, step: int) -> int:
        """Drop JSONL lines with step > ``step`` (and a torn last line); hide them in TB too.

        Rewrites the file atomically and returns how many lines were dropped.
        """
        if not self.enabled:
            return 0
        self._file.close()
        kept, dropped = [], 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    ok = int(json.loads(line)["step"]) <= step
                except (ValueError, KeyError, TypeError):
                    ok = False  # a line torn by a crash mid-write
                if ok:
                    kept.append(line if line.endswith("\n") else line + "\n")
                else:
                    dropped += 1
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        # TensorBoard hides events at or after purge_step written by earlier sessions.
        self._purge_step = int(step) + 1
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return dropped

    def close(self) -> None:
        """Flush and close; safe to call twice."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._file is not None:
            self._file.close()
            self._file = None
        self.enabled = False

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

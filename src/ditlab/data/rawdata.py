"""What every reader of a data source returns: :class:`RawData`.

Every reader returns a :class:`RawData`: images as a C-contiguous ``(N, 3, H, W)`` uint8 numpy
array, labels (or ``None``), class names, the files skipped as unreadable and per-image names.
:func:`ditlab.data.load_image_data` picks the reader and wraps the result as tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["RawData"]


@dataclass
class RawData:
    images: np.ndarray  # (N, 3, H, W) uint8, C-contiguous
    labels: Optional[np.ndarray]  # (N,) int64, or None when unlabeled
    class_names: list[str]
    source: str
    skipped: list[str] = field(default_factory=list)
    skip_reasons: list[str] = field(default_factory=list)
    # Per-image names in image order: the path relative to the data set root (posix, as the folder
    # layout sees it: a zip's wrapping folder is not part of it) for folders and zips; None for
    # array sources, whose images are named by their row index (see ImageData.names).
    names: Optional[list[str]] = None

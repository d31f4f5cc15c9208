"""What every reader of a data source returns: :class:`RawData`.

Every reader returns a :class:`RawData`: images as a C-contiguous ``(N, 3, H, W)`` uint8 numpy
array, labels (or ``None``), class names and the files skipped as unreadable.
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

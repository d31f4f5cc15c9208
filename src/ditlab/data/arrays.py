"""Helpers for the sources that arrive as arrays (``.npz``, torchvision): image layout, labels,
class names and resizing a whole ``(N, 3, H, W)`` array with threads."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from ditlab.data.decode_pool import chunk_size, num_workers, progress_bar
from ditlab.data.images import DataError, fit_to_size

__all__ = ["array_to_nchw", "resize_images", "labels_array", "class_names_for"]


def array_to_nchw(arr: np.ndarray, name: str) -> np.ndarray:
    """A uint8 image array -> C-contiguous ``(N, 3, H, W)``.

    Accepts ``(N, H, W)`` (grey), ``(N, H, W, C)`` or ``(N, C, H, W)`` with C = 1 (grey,
    replicated) or 3. ``name`` is used in messages.
    """
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise DataError(
            f"{name} has shape {tuple(arr.shape)}; expected (N, H, W, C) or (N, C, H, W) with "
            f"C = 3 (RGB) or 1 (grey), or (N, H, W) for grey."
        )
    c_first, c_last = arr.shape[1] in (1, 3), arr.shape[3] in (1, 3)
    if c_last:  # NHWC (also when both axes could be channels: then a side is < 8 px anyway)
        arr = arr.transpose(0, 3, 1, 2)
    elif not c_first:
        hint = "; drop the alpha channel first (x[..., :3])" if 4 in (arr.shape[1], arr.shape[3]) else ""
        raise DataError(
            f"{name} has shape {tuple(arr.shape)}: neither its second nor its last axis holds 1 "
            f"or 3 channels. Expected NHWC or NCHW with 3 (RGB) or 1 (grey) channels{hint}."
        )
    if arr.shape[1] == 1:
        arr = np.repeat(arr, 3, axis=1)
    return np.ascontiguousarray(arr)


def resize_images(
    images: np.ndarray, image_size: int, progress: bool = True, desc: str = "resizing"
) -> np.ndarray:
    """Resize (shorter side) and centre-crop an ``(N, 3, H, W)`` uint8 array, with threads."""
    n = images.shape[0]
    if images.shape[2:] == (image_size, image_size):
        return images
    out = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    workers = num_workers()
    chunk = chunk_size(n, workers)

    def work(start: int) -> int:
        stop = min(n, start + chunk)
        for i in range(start, stop):
            img = Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0)), "RGB")
            out[i] = np.asarray(fit_to_size(img, image_size)).transpose(2, 0, 1)
        return stop - start

    bar = progress_bar(n, desc, progress)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ditlab-resize") as pool:
        for done in pool.map(work, range(0, n, chunk)):
            bar.update(done)
    bar.close()
    return out


def labels_array(labels: Any, n: int, name: str) -> np.ndarray:
    """Labels as ``(n,)`` int64 class indices >= 0 (``(n, 1)`` and integral floats accepted)."""
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(f"{name} has shape {tuple(arr.shape)}; expected ({n},), one label per image")
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and arr.size and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise DataError(f"{name} has dtype {arr.dtype}; expected integer class indices")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise DataError(f"{name} contains negative values (min {arr.min()}); expected 0..K-1")
    return arr


def class_names_for(labels: np.ndarray, names: Optional[Sequence[str]], name: str) -> list[str]:
    """The given class names (at least one per label value), or ``"0"``, ``"1"``, ... if None."""
    k = int(labels.max()) + 1 if labels.size else 0
    if names is None:
        return [str(i) for i in range(k)]
    names = [str(x) for x in names]
    if len(names) < k:
        raise DataError(
            f"{name} lists {len(names)} class names but the labels go up to {k - 1}; "
            f"give one name per class"
        )
    return names

"""Writing sample images: PNG grids to look at, ``.npz`` batches for FID-style evaluation.

Files are written to a temp name and ``os.replace``-d into place, so a reader (a TensorBoard tab, an
evaluation job polling the folder) never sees half a file, and a crash leaves the old one intact.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model-space pixels in [-1, 1] -> uint8 in [0, 255] (rounded, clamped; NaN -> 0 so it shows)."""
    return ((x.float().nan_to_num(-1.0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _as_nhwc(images) -> np.ndarray:
    """uint8 torch (N,C,H,W) or numpy (N,H,W,C), C in {1, 3}; a single image may drop N."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim == 4:
            images = images.permute(0, 2, 3, 1)
        images = images.numpy()
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}; convert with ditlab.imageio.to_uint8")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected torch (N,C,H,W) or numpy (N,H,W,C) with C in (1, 3), got "
                         f"{type(images).__name__} shape {images.shape}")
    return images


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def save_image_grid(images, path, nrow: int | None = None, padding: int = 2, pad_value: int = 0) -> Path:
    """Tile images into one PNG, ``nrow`` images per row (torchvision's meaning), ``padding`` px apart.

    ``nrow`` defaults to ceil(sqrt(N)). The grid has a ``padding`` border on every side, so it is
    ``rows*(H+p)+p`` by ``nrow*(W+p)+p``. Returns ``path``.
    """
    imgs = _as_nhwc(images)
    n, h, w, c = imgs.shape
    ncol = max(1, min(n, nrow or math.ceil(math.sqrt(n))))
    nrows = math.ceil(n / ncol)
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), pad_value, np.uint8)
    for i, img in enumerate(imgs):
        y, x = padding + (i // ncol) * (h + padding), padding + (i % ncol) * (w + padding)
        grid[y:y + h, x:x + w] = img
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(path)
    try:
        Image.fromarray(grid[..., 0] if c == 1 else grid).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_npz_images(path, images_nhwc_uint8, labels=None) -> Path:
    """Save samples as ``arr_0`` (N,H,W,3 uint8) and, if given, labels as ``arr_1`` (int64).

    ``arr_0``/``arr_1`` is the layout the common ADM/guided-diffusion FID evaluator reads. Like
    ``np.savez``, ``.npz`` is appended to a path without it; the real path is returned. The file is
    fsynced before the rename: sample batches are expensive to regenerate.
    """
    images = images_nhwc_uint8
    if isinstance(images, torch.Tensor):  # already NHWC here, unlike save_image_grid's torch input
        images = images.detach().cpu().numpy()
    images = _as_nhwc(images)
    arrays = [images]
    if labels is not None:
        labels = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
        arrays.append(labels)
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    return atomic_savez(path, **{f"arr_{i}": a for i, a in enumerate(arrays)})


def atomic_savez(path, /, **arrays) -> Path:
    """``np.savez(path, **arrays)`` written atomically: temp file in the same folder, fsync, rename.

    ``path`` is used as given (its folder is created): unlike ``np.savez`` on a file name, no
    ``.npz`` is appended -- callers that want numpy's suffix rule apply it first. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(path)
    try:
        with open(tmp, "wb") as f:  # a file object stops np.savez from renaming the temp file
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

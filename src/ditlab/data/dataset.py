"""The loaded data set (:class:`ImageData`) and :func:`load_image_data`, the one entry point.

Training keeps the whole data set in memory as one uint8 tensor (the trainer indexes it on the
GPU), so loading decodes everything up front, on the CPU, and every problem with the data
(missing path, unreadable files, sizes, modes) is reported here, before any GPU work starts.
See :mod:`ditlab.data.images` for mode conversion and the resize policy and
:mod:`ditlab.data.folder` for the folder / zip layout.
"""
from __future__ import annotations

import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ditlab.data.embedded import EMBEDDED_SAMPLE_DESCRIPTION, embedded_sample_path
from ditlab.data.folder import read_folder
from ditlab.data.images import IMAGE_EXTENSIONS, MIN_SIDE, DataError
from ditlab.data.npzsource import read_npz
from ditlab.data.rawdata import RawData
from ditlab.data.tvsource import read_torchvision
from ditlab.data.zipsource import read_zip

__all__ = ["ImageData", "load_image_data"]

# What data.path accepts, for the errors about a path that is missing or of the wrong kind.
_ACCEPTED = (
    "data.path takes an image folder or a .zip in ImageFolder layout (CLASS/file.ext, or files directly "
    f"in it; accepted extensions, case-insensitive: {' '.join(IMAGE_EXTENSIONS)}), an .npz with 'images', "
    "or torchvision:NAME"
)


@dataclass
class ImageData:
    """A whole image data set in memory."""

    images: torch.Tensor  # (N, 3, H, W) uint8, contiguous
    labels: torch.Tensor  # (N,) int64; all zeros when the source has no labels
    class_names: list[str]  # [] when unlabeled
    source: str  # human-readable description (path / torchvision name)
    skipped: list[str] = field(default_factory=list)  # files left out under on_bad_image="skip"
    # One name per image, unique: the path relative to the data set root for folders and zips
    # ("cat/0001.png"), the row index ("0", "1", ...) for .npz and torchvision sources. Files keyed
    # by image (context sets, ditlab.data.context_sets) align to the images through these names.
    names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of every image."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def summary(self) -> str:
        h, w = self.image_size
        classes = f"{self.num_classes} classes" if self.class_names else "unlabeled"
        skipped = f", {len(self.skipped)} unreadable skipped" if self.skipped else ""
        return f"{len(self):,} images {w}x{h}, {classes}{skipped} from {self.source}"


def _to_image_data(raw: RawData, source: Optional[str] = None) -> ImageData:
    images = torch.from_numpy(np.ascontiguousarray(raw.images))
    n = images.shape[0]
    if raw.labels is not None and raw.class_names:
        labels = torch.from_numpy(np.ascontiguousarray(raw.labels, dtype=np.int64))
        class_names = list(raw.class_names)
    else:
        labels = torch.zeros(n, dtype=torch.int64)
        class_names = []
    names = list(raw.names) if raw.names is not None else [str(i) for i in range(n)]
    return ImageData(images, labels, class_names, source or raw.source, list(raw.skipped), names)


def _warn_skipped(raw: RawData) -> None:
    if not raw.skipped:
        return
    total = len(raw.skipped) + raw.images.shape[0]
    print(
        f"warning: skipped {len(raw.skipped)} of {total} images in {raw.source} that could not "
        f"be read (first: {raw.skipped[0]}: {raw.skip_reasons[0]}); listed in ImageData.skipped",
        file=sys.stderr,
        flush=True,
    )


def load_image_data(
    path: str,
    image_size: Optional[int] = None,
    on_bad_image: str = "error",
    root: str = "~/.cache/ditlab/datasets",
    progress: bool = True,
) -> ImageData:
    """Load a whole data set as ``(N, 3, H, W)`` uint8 images and ``(N,)`` int64 labels.

    ``path``:
      * ``""``: the CIFAR-10 sample embedded in the package (5,000 images 32x32, 10 classes);
      * a folder or a ``.zip`` in ImageFolder layout (``CLASS/.../file.png``; files directly in
        the root make an unlabeled set);
      * an ``.npz`` with ``images`` (uint8 NHWC or NCHW, 3 or 1 channels) and optional ``labels``
        and ``class_names``;
      * ``torchvision:NAME`` or ``torchvision:NAME:SPLIT`` (e.g. ``torchvision:CIFAR10``),
        downloaded into ``root``.

    ``image_size``: None keeps the images' size (which must be uniform); an int resizes the
    shorter side and centre-crops (see :mod:`ditlab.data.images`). ``on_bad_image``: ``"error"``
    stops at the first unreadable file, ``"skip"`` leaves unreadable files out, lists them in
    ``skipped`` and prints one warning line. Raises :class:`DataError` (a ValueError) with the
    offending file or option named.
    """
    if on_bad_image not in ("error", "skip"):
        raise DataError(f"data.on_bad_image must be 'error' or 'skip', not {on_bad_image!r}")
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
            raise DataError(f"data.image_size must be an integer or null, not {image_size!r}")
        image_size = int(image_size)
        if image_size < MIN_SIDE:
            raise DataError(f"data.image_size must be at least {MIN_SIDE}, not {image_size}")
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"data.path must be a string, not {type(path).__name__}")
    spec = os.fspath(path)
    args = dict(image_size=image_size, on_bad_image=on_bad_image, progress=progress)

    if spec.strip() == "":
        try:
            sample = embedded_sample_path()
        except FileNotFoundError as e:
            raise DataError(str(e)) from None
        raw = read_zip(sample, **args)
        _warn_skipped(raw)
        return _to_image_data(raw, f"{EMBEDDED_SAMPLE_DESCRIPTION} ({sample})")

    if spec.startswith("torchvision:"):
        raw = read_torchvision(spec, root, **args)
        return _to_image_data(raw)

    p = Path(os.path.expanduser(spec))
    if not p.exists():
        hint = ""
        if ":" in spec and not spec.startswith(("/", ".", "~")) and spec.split(":", 1)[0].lower() in (
            "tv", "torch", "torchvision", "tvision",
        ):
            hint = "; for a torchvision data set write torchvision:NAME, e.g. torchvision:CIFAR10"
        raise DataError(f"data.path {spec!r} does not exist (resolved to {p.absolute()}){hint}. {_ACCEPTED}")
    if p.is_dir():
        raw = read_folder(p, **args)
    elif p.suffix.lower() == ".npz":
        raw = read_npz(p, **args)
    elif p.suffix.lower() == ".zip" or zipfile.is_zipfile(p):
        raw = read_zip(p, **args)
    else:
        raise DataError(f"data.path {spec!r} is a file but not a .zip or .npz. {_ACCEPTED}")
    _warn_skipped(raw)
    return _to_image_data(raw)

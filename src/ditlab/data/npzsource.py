"""``.npz`` files: ``images`` (uint8, NHWC or NCHW), optional ``labels`` and ``class_names``."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from ditlab.data.arrays import (
    array_to_nchw,
    class_names_for,
    labels_array,
    resize_images,
)
from ditlab.data.images import DataError, check_image_size
from ditlab.data.rawdata import RawData

__all__ = ["read_npz"]


def _npz_headers(path: Path) -> dict[str, Optional[tuple]]:
    """``key -> (shape, dtype)`` (None if unreadable) for every array of an npz, from headers."""
    out: dict[str, Optional[tuple]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[: -len(".npy")]
                try:
                    with zf.open(info) as f:
                        version = np.lib.format.read_magic(f)
                        if version == (1, 0):
                            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                        else:
                            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    out[key] = (tuple(shape), dtype)
                except Exception:  # noqa: BLE001
                    out[key] = None
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"cannot read {path} as an .npz archive: {e}") from None
    return out


def _describe(headers: dict) -> str:
    parts = []
    for key, hdr in headers.items():
        if hdr is None:
            parts.append(f"{key!r}")
        else:
            shape, dtype = hdr
            parts.append(f"{key!r} {dtype} {shape}")
    return ", ".join(parts) if parts else "no arrays"


def _check_uint8(arr: np.ndarray, name: str) -> None:
    if arr.dtype == np.uint8:
        return
    if arr.dtype.kind == "f":
        lo, hi = (float(np.nanmin(arr)), float(np.nanmax(arr))) if arr.size else (0.0, 0.0)
        raise DataError(
            f"{name} holds {arr.dtype} values in [{lo:.3g}, {hi:.3g}]; ditlab expects uint8 in "
            f"[0, 255] and does not guess how floats are scaled. Convert before saving: from "
            f"[0, 1] use (x * 255).round().clip(0, 255).astype(np.uint8); from [-1, 1] use "
            f"((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8)."
        )
    raise DataError(
        f"{name} has dtype {arr.dtype}; ditlab expects uint8 in [0, 255]. If the values already "
        f"lie in [0, 255] save x.astype(np.uint8); for 16-bit data save (x >> 8).astype(np.uint8)."
    )


def _images_key(path: Path, headers: dict[str, Optional[tuple]]) -> str:
    """``images``, or else the one 4-D uint8 array of the file."""
    if "images" in headers:
        return "images"
    candidates = [
        k for k, h in headers.items() if h is not None and len(h[0]) == 4 and h[1] == np.uint8
    ]
    if len(candidates) != 1:
        raise DataError(
            f"{path} has no array named 'images'"
            + (" and several 4-D uint8 arrays" if len(candidates) > 1 else "")
            + f"; found: {_describe(headers)}. Save the images as np.savez(path, images=x, "
            f"labels=y) with x uint8 of shape (N, H, W, 3) or (N, 3, H, W)."
        )
    return candidates[0]


def _load_arrays(path: Path, headers: dict, key: str):
    """``(images, labels or None, class_names or None)`` as stored in the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arr = z[key]
            labels_raw = z["labels"] if "labels" in headers else None
            try:
                names_raw = z["class_names"] if "class_names" in headers else None
            except ValueError:
                raise DataError(
                    f"'class_names' in {path} is an object array; save it as a string array: "
                    f"class_names=np.array(names, dtype=str)"
                ) from None
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    return arr, labels_raw, names_raw


def _labels_and_names(path: Path, labels_raw, names_raw, n: int):
    """``(labels or None, class names)`` from the stored ``labels`` and ``class_names``."""
    if labels_raw is None:
        if names_raw is not None:
            raise DataError(f"{path} has 'class_names' but no 'labels'; add labels=(N,) ints")
        return None, []
    labels = labels_array(labels_raw, n, f"array 'labels' of {path}")
    if names_raw is not None:
        if names_raw.dtype.kind not in "US" or names_raw.ndim != 1:
            raise DataError(
                f"'class_names' in {path} has dtype {names_raw.dtype} and shape "
                f"{names_raw.shape}; expected a 1-D string array"
            )
        names_raw = [x.decode() if isinstance(x, bytes) else str(x) for x in names_raw]
    return labels, class_names_for(labels, names_raw, f"array 'class_names' of {path}")


def read_npz(path, image_size=None, on_bad_image="error", progress=True) -> RawData:
    """Read an ``.npz``: ``images`` (uint8, NHWC or NCHW), optional ``labels``, ``class_names``."""
    path = Path(path)
    headers = _npz_headers(path)
    key = _images_key(path, headers)
    arr, labels_raw, names_raw = _load_arrays(path, headers, key)
    name = f"array {key!r} of {path}"
    _check_uint8(arr, name)
    images = array_to_nchw(arr, name)
    n, _, h, w = images.shape
    if n == 0:
        raise DataError(f"{name} holds no images (shape {tuple(arr.shape)})")
    check_image_size(w, h, f"{name} (every image)")
    labels, class_names = _labels_and_names(path, labels_raw, names_raw, n)
    del arr
    if image_size is not None:
        images = resize_images(images, image_size, progress, f"resizing {path.name}")
    return RawData(images, labels, class_names, str(path))

"""Decoding one image file into an RGB uint8 array: mode conversion and the resize policy.

Everything ditlab trains on is 8-bit RGB. Files are decoded with Pillow and converted as follows:

* ``RGB``: as is.
* ``L``, ``1``: grey replicated to the three channels.
* ``LA``, ``RGBA``, ``PA``, ``La``, ``RGBa`` and ``P`` with a transparent colour: alpha-composited on
  a white background (a fully transparent pixel becomes white).
* ``P`` without transparency, ``CMYK``, ``YCbCr``, ``RGBX`` and other 8-bit modes Pillow can convert:
  ``Image.convert("RGB")``.
* 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ...): scaled to 8 bits by the bit depth,
  ``value >> 8`` (65535 -> 255, 32768 -> 128), never clipped. ``I`` (32-bit integer) is treated as
  16-bit data when its values lie in [0, 65535]; otherwise it is an error.
* ``F`` (32-bit float) and anything Pillow cannot convert: an error naming the file.

The EXIF orientation tag, when present, is applied (photos appear upright). Multi-frame files
(GIF, TIFF, WebP) contribute their first frame.

Resize policy
-------------
* ``image_size=None``: images keep their size, and all images of a data set must share one size
  (the loader names the first file whose size differs and suggests ``data.image_size``).
* ``image_size=S``: the shorter side is resized to ``S`` and the centre ``S x S`` square is kept
  (the crop and the resize are done in one ``Image.resize`` call with a source box). Downscaling
  uses LANCZOS, upscaling BICUBIC; an image already ``S x S`` is left untouched. Large JPEGs are
  first decoded at a reduced DCT scale (``Image.draft``) that keeps the shorter side >= ``S``.
* Whatever ``image_size`` is, an image smaller than ``MIN_SIDE`` (8) pixels on a side, or with an
  aspect ratio beyond ``MAX_ASPECT`` (4:1), is an error naming the file: such images are almost
  always thumbnails, icons or banners that would train badly after a centre crop.

Errors
------
:class:`DataError` (a ``ValueError``) is the one error class of :mod:`ditlab.data`. Its subclass
:class:`BadImageError` marks files that cannot be decoded at all (0 bytes, not an image, truncated,
corrupt); only those are left out under ``on_bad_image="skip"``. Policy errors (unsupported mode,
tiny or extreme-aspect image, size mismatch) always stop the load, since skipping them would drop
valid data silently.
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MIN_SIDE",
    "MAX_ASPECT",
    "DataError",
    "BadImageError",
    "is_image_name",
    "check_image_size",
    "to_rgb",
    "fit_to_size",
    "decode_image",
]

#: File extensions (lower case) recognised as images in folders and zips.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
#: Smallest accepted side, in pixels.
MIN_SIDE = 8
#: Largest accepted ratio of the longer to the shorter side.
MAX_ASPECT = 4.0

_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
_EXIF_ORIENTATION = 0x0112


class DataError(ValueError):
    """A data set cannot be loaded as asked; the message says which file or option and why."""


class BadImageError(DataError):
    """One file cannot be decoded (empty, not an image, truncated or corrupt).

    ``name`` is the file as shown to the user (``path`` or ``archive.zip:member``), ``reason`` a
    short phrase. These are the errors that ``on_bad_image="skip"`` turns into skipped files.
    """

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(
            f"cannot read image {name}: {reason}. Fix or remove the file, or set "
            f"data.on_bad_image=skip to leave unreadable files out."
        )


def is_image_name(name: str) -> bool:
    """Whether a file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def check_image_size(width: int, height: int, name: str) -> None:
    """Apply the tiny and extreme-aspect policy (see the module docstring)."""
    if width < MIN_SIDE or height < MIN_SIDE:
        raise DataError(
            f"image {name} is {width}x{height} pixels; images must be at least "
            f"{MIN_SIDE}x{MIN_SIDE}. Remove it (or upscale it) before training."
        )
    long, short = max(width, height), min(width, height)
    if long > MAX_ASPECT * short:
        raise DataError(
            f"image {name} is {width}x{height} pixels, an aspect ratio of {long / short:.1f}:1; "
            f"at most {MAX_ASPECT:g}:1 is accepted, since the centre crop would discard most of "
            f"it. Crop or remove it before training."
        )


def _on_white(img: Image.Image) -> Image.Image:
    """Composite an image with alpha on a white background; returns RGB."""
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    background.alpha_composite(rgba)
    return background.convert("RGB")


def _grey16_to_rgb(img: Image.Image, name: str) -> Image.Image:
    """16-bit (or 32-bit integer holding 16-bit) grey -> 8-bit RGB by ``value >> 8``."""
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise DataError(f"image {name}: unexpected array shape {arr.shape} for mode {img.mode}")
    arr = arr.astype(np.int64, copy=False)
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise DataError(
            f"image {name} (mode {img.mode}) has integer values in [{lo}, {hi}]; only data that "
            f"fits 16 bits ([0, 65535]) is converted. Save it as 8- or 16-bit PNG instead."
        )
    grey = (arr >> 8).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")


def to_rgb(img: Image.Image, name: str = "<image>") -> Image.Image:
    """Convert a loaded Pillow image of any supported mode to ``RGB`` (see the module docstring).

    Raises :class:`DataError` naming ``name`` for float images and modes Pillow cannot convert.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("L", "1", "CMYK", "YCbCr", "RGBX"):
        return img.convert("RGB")
    if mode in _ALPHA_MODES:
        return _on_white(img)
    if mode == "P":
        if "transparency" in img.info:
            return _on_white(img.convert("RGBA"))
        return img.convert("RGB")
    if mode == "I" or mode.startswith("I;16"):
        return _grey16_to_rgb(img, name)
    if mode == "F":
        raise DataError(
            f"image {name} is a 32-bit floating-point image (mode F), which ditlab does not "
            f"convert (its value range is unknown). Save it as an 8-bit RGB or grey image."
        )
    try:
        return img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - Pillow raises ValueError / OSError for odd modes
        raise DataError(
            f"image {name} has mode {mode!r}, which cannot be converted to RGB ({e}). "
            f"Save it as an 8-bit RGB image."
        ) from e


def fit_to_size(img: Image.Image, image_size: int) -> Image.Image:
    """Resize the shorter side to ``image_size`` and keep the centre square (one resize call)."""
    w, h = img.size
    if (w, h) == (image_size, image_size):
        return img
    side = min(w, h)
    left = (w - side) / 2.0
    top = (h - side) / 2.0
    box = (left, top, left + side, top + side)
    resample = Image.Resampling.LANCZOS if side > image_size else Image.Resampling.BICUBIC
    return img.resize((image_size, image_size), resample=resample, box=box)


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not worth failing the image over
        return img
    if orientation in (None, 1):
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001
        return img


def _failure_reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, Image.DecompressionBombError):
        return f"too many pixels ({text})"
    if "truncat" in text.lower():
        return f"the file is truncated ({text})"
    return f"corrupt image data ({type(e).__name__}: {text})"


def decode_image(data: bytes, name: str, image_size: Optional[int] = None) -> np.ndarray:
    """Decode encoded image bytes to an ``(H, W, 3)`` uint8 array.

    ``name`` is used in messages only. With ``image_size`` the result is ``image_size`` square
    (resize + centre crop); without it the image keeps its size. Raises :class:`BadImageError`
    for undecodable data and :class:`DataError` for policy violations.
    """
    if len(data) == 0:
        raise BadImageError(name, "the file is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImageError(name, "not a recognised image format") from None
    except Exception as e:  # noqa: BLE001 - Pillow plugins raise many kinds of errors
        raise BadImageError(name, _failure_reason(e)) from None
    with img:
        width, height = img.size
        check_image_size(width, height, name)
        if image_size is not None and img.format == "JPEG" and min(width, height) >= 2 * image_size:
            try:
                img.draft(None, (image_size, image_size))
            except Exception:  # noqa: BLE001 - draft is an optimisation only
                pass
        try:
            img.load()
        except Exception as e:  # noqa: BLE001
            raise BadImageError(name, _failure_reason(e)) from None
        out = _apply_exif_orientation(img)
        out = to_rgb(out, name)
        if image_size is not None:
            out = fit_to_size(out, image_size)
        arr = np.asarray(out, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # pragma: no cover - to_rgb guarantees RGB
        raise DataError(f"image {name}: decoded to unexpected shape {arr.shape}")
    return arr

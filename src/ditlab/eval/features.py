"""Inception features of uint8 images: preprocessing, batching and the fp32 network pass.

Pipeline (identical for samples and reference images):

1. uint8 images, NHWC numpy or NCHW torch, go to the device as uint8;
2. :func:`preprocess`: to float32, bilinear resize to 299 x 299 (``align_corners=False``, no
   antialiasing) unless already that size, then ``(x - 128) / 128`` -> ``[-1, 0.9921875]``;
3. the Inception network (:mod:`ditlab.eval.inception`) in fp32 -- no autocast, and TF32 turned
   off for its convolutions and matmuls on CUDA -- under ``torch.inference_mode``;
4. :class:`~ditlab.eval.stats.FeatureStats` (mean, unbiased covariance) in float64, then
   :func:`~ditlab.eval.stats.frechet_distance`; :func:`~ditlab.eval.stats.kid` uses the features
   themselves (:mod:`ditlab.eval.stats`).

:class:`NpzImages` reads sample files (uint8 images in an ``.npz``) batch by batch.
"""
from __future__ import annotations

import contextlib
import os
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from ditlab.devices import resolve_device

__all__ = [
    "PREPROCESS_VERSION",
    "INCEPTION_SIZE",
    "preprocess",
    "extract_features",
    "NpzImages",
]

INCEPTION_SIZE = 299
#: Part of every reference cache key: change it whenever the pixels fed to the network change.
PREPROCESS_VERSION = "ditlab-fid-v1:uint8->float32,bilinear299(align_corners=False,no-antialias),(x-128)/128,fp32"

ArrayOrTensor = Union[np.ndarray, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Features


def preprocess(images_nchw_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> float32 ``(N, 3, 299, 299)`` in ``[-1, 0.9921875]``, on its device.

    Bilinear interpolation with ``align_corners=False`` (a convex combination of pixels; the
    float32 round-off past [0, 255] is clamped), then TensorFlow Inception's ``(x - 128) / 128``.
    """
    x = images_nchw_uint8
    if x.dtype != torch.uint8:
        raise ValueError(f"preprocess expects uint8 images, got {x.dtype}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"preprocess expects (N, 3, H, W) images, got shape {tuple(x.shape)}")
    x = x.to(torch.float32)
    if tuple(x.shape[2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False,
                          antialias=False)
        # Bilinear weights are convex, but their float32 sum can miss 1 by an ulp (255 -> 255.00003):
        # clamp so the network sees exactly [-1, 0.9921875].
        x = x.clamp_(0.0, 255.0)
    return (x - 128.0) / 128.0


def _as_nchw_tensor(batch: Any, what: str) -> torch.Tensor:
    """One batch -> uint8 NCHW tensor (still on its original device, not yet copied)."""
    if isinstance(batch, np.ndarray):
        if batch.dtype != np.uint8:
            raise ValueError(f"{what}: numpy images must be uint8, got {batch.dtype}")
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(
                f"{what}: numpy images must be NHWC (N, H, W, 3), got shape {batch.shape}"
                + ("; for NCHW data pass torch.from_numpy(x)" if batch.ndim == 4 and batch.shape[1] == 3 else "")
            )
        if not batch.flags.writeable:
            batch = batch.copy()
        return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
    if isinstance(batch, torch.Tensor):
        if batch.dtype != torch.uint8:
            raise ValueError(f"{what}: torch images must be uint8, got {batch.dtype}")
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"{what}: torch images must be NCHW (N, 3, H, W), got shape {tuple(batch.shape)}")
        return batch
    raise TypeError(f"{what}: expected a uint8 numpy NHWC array or torch NCHW tensor, got {type(batch).__name__}")


def _batches(images: Any, batch_size: int) -> tuple[Iterator[torch.Tensor], Optional[int]]:
    """(iterator of uint8 NCHW tensors of at most batch_size, total count or None)."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        whole = _as_nchw_tensor(images, "images")
        n = int(whole.shape[0])
        return (whole[i:i + batch_size] for i in range(0, n, batch_size)), n

    total = len(images) if hasattr(images, "__len__") and not isinstance(images, (list, tuple)) else None
    if isinstance(images, (list, tuple)):
        total = sum(int(b.shape[0]) for b in images if hasattr(b, "shape"))

    def gen() -> Iterator[torch.Tensor]:
        for k, item in enumerate(images):
            t = _as_nchw_tensor(item, f"batch {k}")
            for i in range(0, int(t.shape[0]), batch_size):
                yield t[i:i + batch_size]

    return gen(), total


@contextlib.contextmanager
def _strict_fp32(device: torch.device):
    """Turn TF32 off for convolutions and matmuls on CUDA while extracting (restored after)."""
    if device.type != "cuda":
        yield
        return
    restore: list = []
    for obj in (torch.backends.cuda.matmul, torch.backends.cudnn):
        try:
            restore.append((obj, "allow_tf32", obj.allow_tf32))
            obj.allow_tf32 = False
        except RuntimeError:  # flags set with PyTorch's newer per-backend API: use that API
            for sub in (getattr(obj, "conv", None), obj):
                if sub is not None and hasattr(sub, "fp32_precision"):
                    restore.append((sub, "fp32_precision", sub.fp32_precision))
                    sub.fp32_precision = "ieee"
                    break
    try:
        yield
    finally:
        for obj, attr, value in reversed(restore):
            try:
                setattr(obj, attr, value)
            except RuntimeError:  # pragma: no cover - defensive
                pass


def shard_rows(images: Any, rows: slice) -> Any:
    """Only rows ``rows.start:rows.stop`` of ``images`` (a tensor, an array or an iterable of batches,
    e.g. :class:`NpzImages`), in order: one rank's share of a sample set under torchrun."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return images[rows]

    def gen():
        seen = 0
        for batch in images:
            b = int(batch.shape[0])
            lo, hi = max(rows.start - seen, 0), min(rows.stop - seen, b)
            if lo < hi:
                yield batch[lo:hi]
            seen += b
            if seen >= rows.stop:
                return
    return gen()


def extract_features(
    images: Any,
    net: Any,
    device: Union[str, torch.device] = "auto",
    batch_size: int = 250,
    progress: bool = True,
    total: Optional[int] = None,
) -> np.ndarray:
    """Inception pool features ``(N, 2048)`` float64 of uint8 images.

    ``images``: a uint8 numpy array ``(N, H, W, 3)``, a uint8 torch tensor ``(N, 3, H, W)`` (on any
    device), or an iterable of such batches (of any sizes; they are re-split to ``batch_size``).
    Preprocessing (:func:`preprocess`) runs on ``device``; the network runs in fp32 (no autocast,
    no TF32) under ``torch.inference_mode``. ``total`` sizes the progress bar of an iterable.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    device = resolve_device(device, setting="--device")
    batches, n_known = _batches(images, batch_size)
    total = total if total is not None else n_known
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="inception features", unit="img", dynamic_ncols=True, file=sys.stderr)
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode(), _strict_fp32(device), torch.autocast(device.type, enabled=False):
            for batch in batches:
                b = int(batch.shape[0])
                if b == 0:
                    continue
                x = preprocess(batch.to(device, non_blocking=True).contiguous())
                feats = net(x)
                if not isinstance(feats, torch.Tensor):
                    raise ValueError(f"the Inception network returned {type(feats).__name__}, expected a tensor")
                if feats.shape[0] != b:
                    raise ValueError(f"the Inception network returned shape {tuple(feats.shape)} for {b} images")
                out.append(feats.reshape(b, -1).float().cpu().numpy())
                if bar is not None:
                    bar.update(b)
    finally:
        if bar is not None:
            bar.close()
    if not out:
        raise ValueError("no images to extract features from (an empty set)")
    return np.concatenate(out, axis=0).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Sample files: uint8 images in an .npz, read in batches


class NpzImages:
    """uint8 images stored in an ``.npz`` under ``arr_0`` or ``images``, read batch by batch.

    The array must be ``(N, H, W, 3)`` (as ``ditlab sample`` writes it) or ``(N, 3, H, W)``.
    Batches are read from the archive member as they are needed, so a 50k x 256 x 256 file does
    not have to fit in memory. Errors name the file and the key.
    """

    KEYS = ("arr_0", "images")

    def __init__(self, path: Union[str, os.PathLike], key: Optional[str] = None):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"samples file {path} does not exist")
        headers = self._headers()
        if key is None:
            key = next((k for k in self.KEYS if k in headers), None)
            if key is None:
                hint = ""
                if {"mu", "sigma"} <= set(headers):
                    hint = " It looks like a statistics file: pass it as --ref."
                raise ValueError(
                    f"{path} has no images: expected an array 'arr_0' or 'images' (uint8, N x H x W x 3); "
                    f"found: {self._describe(headers)}.{hint}"
                )
        elif key not in headers:
            raise ValueError(f"{path} has no array {key!r}; found: {self._describe(headers)}")
        self.key = key
        hdr = headers[key]
        if hdr is None:
            raise ValueError(f"array {key!r} of {path} cannot be read (not a .npy member)")
        shape, fortran, dtype = hdr
        name = f"array {key!r} of {path}"
        if dtype != np.uint8:
            raise ValueError(f"{name} has dtype {dtype}; FID needs uint8 images in [0, 255]"
                             + (" (convert floats with (x * 255).round().clip(0, 255).astype(np.uint8) "
                                "from [0, 1])" if np.dtype(dtype).kind == "f" else ""))
        if len(shape) != 4:
            raise ValueError(f"{name} has shape {tuple(shape)}; expected N x H x W x 3 uint8 images")
        if shape[3] == 3:
            self.layout = "NHWC"
        elif shape[1] == 3:
            self.layout = "NCHW"
        else:
            raise ValueError(f"{name} has shape {tuple(shape)}: not 3-channel (RGB) images; expected N x H x W x 3")
        if shape[0] == 0:
            raise ValueError(f"{name} holds no images (shape {tuple(shape)})")
        self.shape = tuple(int(s) for s in shape)
        self.fortran = bool(fortran)

    def _headers(self) -> dict:
        out: dict = {}
        try:
            with zipfile.ZipFile(self.path) as zf:
                for info in zf.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    try:
                        with zf.open(info) as f:
                            version = np.lib.format.read_magic(f)
                            if version == (1, 0):
                                hdr = np.lib.format.read_array_header_1_0(f)
                            else:
                                hdr = np.lib.format.read_array_header_2_0(f)
                        out[info.filename[:-4]] = hdr
                    except Exception:  # noqa: BLE001
                        out[info.filename[:-4]] = None
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"cannot read {self.path} as an .npz archive: {e}") from None
        return out

    @staticmethod
    def _describe(headers: dict) -> str:
        parts = [f"{k!r}" if h is None else f"{k!r} {h[2]} {tuple(h[0])}" for k, h in headers.items()]
        return ", ".join(parts) if parts else "no arrays"

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self) -> Iterator[ArrayOrTensor]:
        return self.batches(1000)

    def batches(self, batch_size: int = 1000) -> Iterator[ArrayOrTensor]:
        """NHWC numpy batches (or NCHW torch batches for an NCHW array)."""
        if self.fortran:  # rare: no streaming, load the whole array
            with np.load(self.path, allow_pickle=False) as z:
                arr = np.ascontiguousarray(z[self.key])
            for i in range(0, arr.shape[0], batch_size):
                yield self._wrap(arr[i:i + batch_size])
            return
        per_image = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as zf, zf.open(f"{self.key}.npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                np.lib.format.read_array_header_1_0(f)
            else:
                np.lib.format.read_array_header_2_0(f)
            done = 0
            while done < self.shape[0]:
                b = min(batch_size, self.shape[0] - done)
                data = f.read(b * per_image)
                if len(data) != b * per_image:
                    raise ValueError(f"array {self.key!r} of {self.path} is truncated after {done} images")
                arr = np.frombuffer(data, dtype=np.uint8).reshape((b,) + self.shape[1:]).copy()
                yield self._wrap(arr)
                done += b

    def _wrap(self, arr: np.ndarray) -> ArrayOrTensor:
        return torch.from_numpy(arr) if self.layout == "NCHW" else arr

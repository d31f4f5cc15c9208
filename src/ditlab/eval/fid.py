"""Inception features, FID and KID, and reference statistics cached by content.

Pipeline (identical for samples and reference images):

1. uint8 images, NHWC numpy or NCHW torch, go to the device as uint8;
2. :func:`preprocess`: to float32, bilinear resize to 299 x 299 (``align_corners=False``, no
   antialiasing) unless already that size, then ``(x - 128) / 128`` -> ``[-1, 0.9921875]``;
3. the Inception network (:mod:`ditlab.eval.inception`) in fp32 -- no autocast, and TF32 turned
   off for its convolutions and matmuls on CUDA -- under ``torch.inference_mode``;
4. :class:`FeatureStats` (mean, unbiased covariance) in float64, then :func:`frechet_distance`;
   :func:`kid` uses the features themselves.

Reference statistics (:func:`reference_stats`) are cached in ``$XDG_CACHE_HOME/ditlab/fid/refs``
under a key that hashes the data set's content, the network's sha256 and
:data:`PREPROCESS_VERSION`, so a changed data set or network never reuses stale numbers.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from ditlab.eval.inception import fid_cache_dir, file_sha256, load_inception

__all__ = [
    "PREPROCESS_VERSION",
    "INCEPTION_SIZE",
    "FEATURES_MAX_N",
    "FeatureStats",
    "ReferenceResult",
    "NpzImages",
    "resolve_device",
    "preprocess",
    "extract_features",
    "frechet_distance",
    "kid",
    "save_stats",
    "load_stats",
    "load_stats_and_features",
    "is_stats_file",
    "dataset_fingerprint",
    "reference_cache_key",
    "reference_stats",
    "compute_reference",
]

INCEPTION_SIZE = 299
#: Part of every reference cache key: change it whenever the pixels fed to the network change.
PREPROCESS_VERSION = "ditlab-fid-v1:uint8->float32,bilinear299(align_corners=False,no-antialias),(x-128)/128,fp32"
#: Features are stored next to the statistics (for KID) only up to this many images, as float32:
#: 50,000 x 2048 x 4 bytes = 410 MB.
FEATURES_MAX_N = 60000
_CACHE_FORMAT = 1

ArrayOrTensor = Union[np.ndarray, torch.Tensor]


def resolve_device(name: Union[str, torch.device, None] = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; an unavailable cuda is a ValueError."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device {name!r} is not a device ({e}); use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} but CUDA is not available on this machine; use --device cpu")
    return device


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
    device = resolve_device(device)
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
# Statistics and distances


@dataclass
class FeatureStats:
    """Mean ``mu`` (D,), covariance ``sigma`` (D, D), both float64, of ``n`` feature vectors.

    ``n`` is None for statistics files that do not record it.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: Optional[int] = None

    def __post_init__(self) -> None:
        self.mu = np.asarray(self.mu, dtype=np.float64).reshape(-1)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        d = self.mu.shape[0]
        if self.sigma.shape != (d, d):
            raise ValueError(f"sigma has shape {self.sigma.shape}; expected ({d}, {d}) to match mu")
        if self.n is not None:
            self.n = int(self.n)

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @classmethod
    def from_features(cls, features: ArrayOrTensor) -> "FeatureStats":
        """Mean and unbiased covariance (like ``np.cov(f, rowvar=False)``), in float64."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {f.shape}")
        n = f.shape[0]
        if n < 2:
            raise ValueError(f"statistics need at least 2 feature vectors, got {n}")
        if not np.all(np.isfinite(f)):
            raise ValueError("features contain NaN or inf")
        mu = f.mean(axis=0)
        centered = f - mu
        sigma = centered.T @ centered / (n - 1)
        return cls(mu, sigma, n)


def _sym_sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix via eigh (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(s1: FeatureStats, s2: FeatureStats) -> float:
    """Fréchet distance between the Gaussians N(mu1, S1) and N(mu2, S2), in float64.

    ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))``, where ``tr(sqrtm(S1 S2))`` is the
    sum of the square roots of the (clipped at 0) eigenvalues of the symmetric PSD matrix
    ``sqrt(S1) S2 sqrt(S1)`` (it has the eigenvalues of S1 S2), with ``sqrt(S1)`` from ``eigh``.
    No complex arithmetic and no ``sqrtm`` iteration: singular (rank-deficient) covariances give
    a finite result. Round-off below zero is clipped to 0.
    """
    mu1, mu2 = np.asarray(s1.mu, np.float64), np.asarray(s2.mu, np.float64)
    a, b = np.asarray(s1.sigma, np.float64), np.asarray(s2.sigma, np.float64)
    if mu1.shape != mu2.shape or a.shape != b.shape or a.shape != (mu1.shape[0],) * 2:
        raise ValueError(
            f"statistics of different dimensions: mu {mu1.shape} vs {mu2.shape}, sigma {a.shape} vs {b.shape} "
            f"(were they computed with the same network?)"
        )
    for name, arr in (("mu1", mu1), ("mu2", mu2), ("sigma1", a), ("sigma2", b)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or inf")
    a = (a + a.T) / 2.0
    b = (b + b.T) / 2.0
    root_a = _sym_sqrt_psd(a)
    m = root_a @ b @ root_a
    m = (m + m.T) / 2.0
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh(m), 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(a) + np.trace(b) - 2.0 * tr_covmean)
    return max(value, 0.0)


def kid(
    f1: ArrayOrTensor,
    f2: ArrayOrTensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) over subsets of the unbiased MMD^2 estimate.

    Kernel ``k(x, y) = (x . y / d + 1)^3`` (d the feature dimension). Each of ``num_subsets``
    rounds draws ``m = min(subset_size, n1, n2)`` rows of each set without replacement
    (``numpy.random.default_rng(seed)``) and computes
    ``sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1)) - 2 sum_{i,j} k(x_i,y_j)/m^2``.
    The std is over subsets (ddof=0). Float64 throughout.
    """
    a = f1.detach().cpu().numpy() if isinstance(f1, torch.Tensor) else np.asarray(f1)
    b = f2.detach().cpu().numpy() if isinstance(f2, torch.Tensor) else np.asarray(f2)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"KID needs two (N, D) feature arrays of equal D, got {a.shape} and {b.shape}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, not {num_subsets}")
    n1, n2, d = a.shape[0], b.shape[0], a.shape[1]
    m = min(int(subset_size), n1, n2)
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors in each set, got {n1} and {n2}")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets, dtype=np.float64)
    for k in range(num_subsets):
        x = a[rng.choice(n1, m, replace=False)].astype(np.float64)
        y = b[rng.choice(n2, m, replace=False)].astype(np.float64)
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        values[k] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                     + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                     - 2.0 * kxy.sum() / (m * m))
    return float(values.mean()), float(values.std())


# ---------------------------------------------------------------------------------------------
# Statistics files


def _atomic_savez(path: Path, arrays: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_stats(
    path: Union[str, os.PathLike],
    stats: FeatureStats,
    features: Optional[ArrayOrTensor] = None,
    meta: Optional[dict] = None,
) -> Path:
    """Write ``mu``, ``sigma``, ``n`` (and ``features`` as float32, if given) to an ``.npz``.

    ``meta`` (str -> str) is stored as string arrays ``meta_<key>``. The write is atomic (temp
    file, fsync, rename). The ``mu``/``sigma`` keys are those of the common FID statistics layout.
    """
    arrays: dict[str, np.ndarray] = {
        "mu": np.asarray(stats.mu, np.float64),
        "sigma": np.asarray(stats.sigma, np.float64),
        "n": np.asarray(-1 if stats.n is None else stats.n, np.int64),
    }
    if features is not None:
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        arrays["features"] = np.asarray(features, dtype=np.float32)
    for k, v in (meta or {}).items():
        arrays[f"meta_{k}"] = np.asarray(str(v))
    return _atomic_savez(Path(path).expanduser(), arrays)


def _npz_keys(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"cannot read {path} as an .npz archive: {e}") from None


def is_stats_file(path: Union[str, os.PathLike]) -> bool:
    """True for an ``.npz`` holding ``mu`` and ``sigma`` (a statistics file rather than images)."""
    p = Path(path).expanduser()
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    keys = set(_npz_keys(p))
    return {"mu", "sigma"} <= keys


def load_stats_and_features(
    path: Union[str, os.PathLike], with_features: bool = True
) -> tuple[FeatureStats, Optional[np.ndarray], dict]:
    """(statistics, features or None, meta dict) from an ``.npz`` with ``mu`` and ``sigma``.

    Reads ditlab's own files and the common layout (``mu``, ``sigma`` only; ``n`` is then None).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"statistics file {path} does not exist")
    keys = _npz_keys(p)
    missing = [k for k in ("mu", "sigma") if k not in keys]
    if missing:
        raise ValueError(
            f"{path} is not a statistics file: no {' and no '.join(repr(k) for k in missing)} "
            f"(found: {', '.join(repr(k) for k in keys) or 'no arrays'})"
        )
    try:
        with np.load(p, allow_pickle=False) as z:
            mu, sigma = z["mu"], z["sigma"]
            n = int(z["n"]) if "n" in keys else -1
            feats = z["features"] if with_features and "features" in keys else None
            meta = {k[5:]: str(z[k]) for k in keys if k.startswith("meta_")}
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if n < 0 and feats is not None:
        n = int(feats.shape[0])
    try:
        stats = FeatureStats(mu, sigma, n if n >= 0 else None)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if feats is not None and (feats.ndim != 2 or feats.shape[1] != stats.dim):
        raise ValueError(f"{path}: 'features' has shape {feats.shape}; expected (N, {stats.dim})")
    return stats, feats, meta


def load_stats(path: Union[str, os.PathLike]) -> FeatureStats:
    """:class:`FeatureStats` from an ``.npz`` with ``mu`` and ``sigma`` (and optionally ``n``)."""
    return load_stats_and_features(path, with_features=False)[0]


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


# ---------------------------------------------------------------------------------------------
# Reference statistics with a content-addressed cache


def dataset_fingerprint(dataset_path: str) -> str:
    """sha256 (hex) identifying a data set's content for the reference cache.

    * a file (``.zip``, ``.npz``): the sha256 of its bytes (remembered per path, size and mtime);
    * a folder: sorted relative paths with sizes and mtimes of every file under it;
    * ``torchvision:NAME[:SPLIT]``: the name itself;
    * ``""``: the embedded CIFAR-10 sample's bytes.
    """
    spec = os.fspath(dataset_path)
    h = hashlib.sha256()
    if spec.startswith("torchvision:"):
        h.update(b"torchvision\0" + spec.encode())
        return h.hexdigest()
    if spec.strip() == "":
        from ditlab.data import embedded_sample_path

        h.update(b"file\0" + file_sha256(embedded_sample_path()).encode())
        return h.hexdigest()
    p = Path(spec).expanduser()
    if p.is_file():
        h.update(b"file\0" + file_sha256(p).encode())
        return h.hexdigest()
    if p.is_dir():
        h.update(b"folder\0")
        entries = []
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for name in files:
                full = Path(root) / name
                try:
                    st = full.stat()
                except OSError:
                    continue
                entries.append((full.relative_to(p).as_posix(), st.st_size, st.st_mtime_ns))
        for rel, size, mtime in sorted(entries):
            h.update(f"{rel}\0{size}\0{mtime}\n".encode())
        return h.hexdigest()
    raise FileNotFoundError(f"data set {spec!r} does not exist (resolved to {p.absolute()})")


def reference_cache_key(dataset_path: str, net_path: Union[str, os.PathLike]) -> str:
    """The cache key: sha256 over the data set fingerprint, the network's sha256 and the
    preprocessing version."""
    payload = json.dumps({
        "format": _CACHE_FORMAT,
        "dataset": dataset_fingerprint(dataset_path),
        "inception_sha256": file_sha256(net_path),
        "preprocess": PREPROCESS_VERSION,
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _default_ref_cache_dir() -> Path:
    return fid_cache_dir() / "refs"


@dataclass
class ReferenceResult:
    stats: FeatureStats
    features: Optional[np.ndarray]  # float32 (N, D) when N <= FEATURES_MAX_N, else None
    cache_file: Optional[Path]  # None when the cache could not be written
    hit: bool
    key: str
    meta: dict


def compute_reference(
    dataset_path: str,
    net_path: Union[str, os.PathLike],
    device: Union[str, torch.device] = "auto",
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    batch_size: int = 250,
    progress: bool = True,
    net: Any = None,
) -> ReferenceResult:
    """Reference statistics and features of a data set, from the cache or computed and cached.

    See :func:`reference_stats`. ``net`` may be an already loaded network (else it is loaded from
    ``net_path`` only on a cache miss); ``net_path``'s sha256 is part of the key either way.
    """
    spec = os.fspath(dataset_path)
    key = reference_cache_key(spec, net_path)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else _default_ref_cache_dir()
    cache_file = folder / f"ref-{key[:32]}.npz"
    if cache_file.is_file():
        try:
            stats, feats, meta = load_stats_and_features(cache_file)
            if meta.get("key") == key:
                return ReferenceResult(stats, feats, cache_file, True, key, meta)
            warnings.warn(f"reference cache {cache_file} has another key; recomputing", stacklevel=2)
        except (ValueError, OSError) as e:
            warnings.warn(f"unreadable reference cache {cache_file} ({e}); recomputing", stacklevel=2)

    from ditlab.data import load_image_data

    data = load_image_data(spec, progress=progress)
    dev = resolve_device(device)
    if net is None:
        net = load_inception(net_path, dev)
    feats64 = extract_features(data.images, net, dev, batch_size=batch_size, progress=progress)
    stats = FeatureStats.from_features(feats64)
    feats = feats64.astype(np.float32) if stats.n <= FEATURES_MAX_N else None
    del feats64
    meta = {
        "key": key,
        "dataset": spec,
        "source": data.source,
        "inception_sha256": file_sha256(net_path),
        "preprocess": PREPROCESS_VERSION,
    }
    try:
        save_stats(cache_file, stats, feats, meta)
        written: Optional[Path] = cache_file
    except OSError as e:
        warnings.warn(f"could not write the reference cache {cache_file}: {e}", stacklevel=2)
        written = None
    return ReferenceResult(stats, feats, written, False, key, meta)


def reference_stats(
    dataset_path: str,
    net_path: Union[str, os.PathLike],
    device: Union[str, torch.device] = "auto",
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    batch_size: int = 250,
    progress: bool = True,
    net: Any = None,
) -> FeatureStats:
    """Inception statistics of a data set (anything ``ditlab.data.load_image_data`` reads).

    Cached in ``cache_dir`` (default ``$XDG_CACHE_HOME/ditlab/fid/refs``) as
    ``ref-<key>.npz``; the key (:func:`reference_cache_key`) hashes the data set's content
    (:func:`dataset_fingerprint`), the network file's sha256 and :data:`PREPROCESS_VERSION`, so a
    second call on unchanged inputs does not load or run the network. The file holds ``mu``,
    ``sigma`` (float64), ``n`` and, for ``n <= FEATURES_MAX_N`` (60,000), the features as float32
    for KID -- about 410 MB for 50,000 images x 2048 features; larger sets store statistics only.
    """
    return compute_reference(dataset_path, net_path, device, cache_dir, batch_size, progress, net).stats

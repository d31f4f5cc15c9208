"""Feature statistics and distances: :class:`FeatureStats`, FID, KID, and statistics files.

:class:`FeatureStats` holds the mean and unbiased covariance in float64;
:func:`frechet_distance` and :func:`kid` compare two sets. Statistics files are ``.npz`` archives
with ``mu`` and ``sigma`` (the common FID layout), optionally ``n``, ``features`` and ``meta_*``.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ditlab.eval.features import ArrayOrTensor
from ditlab.imageio import atomic_savez

__all__ = [
    "FeatureStats",
    "frechet_distance",
    "kid",
    "save_stats",
    "is_stats_file",
    "load_stats_and_features",
    "load_stats",
]


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
    return atomic_savez(Path(path).expanduser(), **arrays)


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

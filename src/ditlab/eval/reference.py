"""Reference statistics of a data set, cached by content.

Reference statistics (:func:`reference_stats`) are cached in ``$XDG_CACHE_HOME/ditlab/fid/refs``
under a key that hashes the data set's content, the network's sha256 and
:data:`~ditlab.eval.features.PREPROCESS_VERSION`, so a changed data set or network never reuses
stale numbers.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ditlab.devices import resolve_device
from ditlab.eval.features import PREPROCESS_VERSION, extract_features
from ditlab.eval.inception import fid_cache_dir, file_sha256, load_inception
from ditlab.eval.stats import FeatureStats, load_stats_and_features, save_stats

__all__ = [
    "FEATURES_MAX_N",
    "dataset_fingerprint",
    "reference_cache_key",
    "ReferenceResult",
    "compute_reference",
    "reference_stats",
]

#: Features are stored next to the statistics (for KID) only up to this many images, as float32:
#: 50,000 x 2048 x 4 bytes = 410 MB.
FEATURES_MAX_N = 60000
_CACHE_FORMAT = 1


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
    dev = resolve_device(device, setting="--device")
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

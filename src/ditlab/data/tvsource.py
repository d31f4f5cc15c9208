"""``torchvision:NAME[:SPLIT]`` data sets: downloaded by torchvision, converted to uint8 arrays.

Data sets that hold their images as one uint8 array (``ds.data``, e.g. CIFAR, MNIST) are
converted directly; the others are iterated item by item (``ds[i] -> (PIL image, target)``).
"""
from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from ditlab.data.arrays import (
    array_to_nchw,
    class_names_for,
    labels_array,
    resize_images,
)
from ditlab.data.decode_pool import progress_bar
from ditlab.data.images import DataError, check_image_size, fit_to_size, to_rgb
from ditlab.data.rawdata import RawData

__all__ = ["read_torchvision"]


def _import_torchvision_datasets():
    try:
        torchvision = importlib.import_module("torchvision")
    except ImportError as e:
        raise DataError(
            f"data.path 'torchvision:...' needs torchvision, which is not installed ({e}). "
            f"Install it with: pip install torchvision (the build matching your torch), or "
            f"pip install 'ditlab[vision]'; or point data.path at an image folder, zip or .npz."
        ) from None
    except Exception as e:  # noqa: BLE001 - e.g. a torchvision built for another torch
        raise DataError(
            f"torchvision is installed but fails to import ({type(e).__name__}: {e}); install the "
            f"torchvision build matching your torch (pip install torchvision)."
        ) from None
    datasets = getattr(torchvision, "datasets", None)
    if datasets is None:
        datasets = importlib.import_module("torchvision.datasets")
    return datasets


def _to_numpy(x: Any) -> Optional[np.ndarray]:
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch") and hasattr(x, "numpy"):
        return x.detach().cpu().numpy()
    return None


def _parse_spec(spec: str) -> tuple[str, str]:
    """``torchvision:NAME[:SPLIT]`` -> ``(NAME, SPLIT)``, the split ``train`` by default."""
    rest = spec.split(":", 1)[1] if ":" in spec else spec
    name, _, split = rest.partition(":")
    name, split = name.strip(), (split.strip() or "train")
    if not name:
        raise DataError(f"data.path {spec!r}: name a torchvision data set, e.g. torchvision:CIFAR10")
    return name, split


def _find_dataset_class(datasets: Any, name: str, spec: str) -> tuple[str, Any]:
    """The data set class called ``name`` (matched case-insensitively if need be) and its name."""
    cls = getattr(datasets, name, None)
    if inspect.isclass(cls):
        return name, cls
    by_lower = {k.lower(): k for k in dir(datasets) if inspect.isclass(getattr(datasets, k))}
    if name.lower() in by_lower:
        name = by_lower[name.lower()]
        return name, getattr(datasets, name)
    raise DataError(
        f"torchvision.datasets has no data set {name!r} (from data.path {spec!r}); "
        f"e.g. torchvision:CIFAR10, torchvision:CIFAR100, torchvision:MNIST, "
        f"torchvision:FashionMNIST, torchvision:SVHN, torchvision:STL10"
    )


def _dataset_kwargs(cls: Any, name: str, split: str) -> dict[str, Any]:
    """The split (``train=`` or ``split=``) and ``download=True``, as the class accepts them."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs: dict[str, Any] = {}
    if "train" in params:
        if split not in ("train", "test"):
            raise DataError(f"torchvision:{name} has splits 'train' and 'test', not {split!r}")
        kwargs["train"] = split == "train"
    elif "split" in params:
        kwargs["split"] = split
    elif split != "train":
        raise DataError(f"torchvision:{name} takes no split; use torchvision:{name}")
    if "download" in params:
        kwargs["download"] = True
    return kwargs


def _open_dataset(cls: Any, root_path: Path, kwargs: dict[str, Any], source: str) -> Any:
    try:
        root_path.mkdir(parents=True, exist_ok=True)
        return cls(str(root_path), **kwargs)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - network errors, checksum errors, bad arguments
        raise DataError(
            f"cannot load {source}: {type(e).__name__}: {e}. Downloading needs network access; "
            f"offline, copy the data set into {root_path} (data.root) or use a local folder/zip."
        ) from None


def _dataset_arrays(ds: Any, n: int, source: str, image_size: Optional[int], progress: bool):
    """``(images (N, 3, H, W), raw labels or None)``: from ``ds.data`` when it is one uint8
    array, otherwise item by item."""
    data = _to_numpy(getattr(ds, "data", None))
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = getattr(ds, "labels", None)
    if data is not None and data.dtype == np.uint8 and data.ndim in (3, 4) and len(data) == n:
        images = array_to_nchw(data, source)
        labels_raw = _to_numpy(targets) if targets is not None else None
        if labels_raw is None and targets is not None:
            labels_raw = np.asarray(list(targets))
        return images, labels_raw
    return _torchvision_items(ds, source, image_size, progress)


def _labels_and_names(ds: Any, labels_raw: Any, n: int, source: str):
    """``(labels or None, class names)``; ``ds.classes`` is used when it covers every label."""
    if labels_raw is None or np.asarray(labels_raw).ndim != 1 or np.asarray(labels_raw).size != n:
        return None, []
    labels = labels_array(labels_raw, n, f"labels of {source}")
    classes = getattr(ds, "classes", None)
    if classes is not None and len(classes) <= int(labels.max()):
        classes = None
    return labels, class_names_for(labels, classes, f"classes of {source}")


def read_torchvision(spec: str, root: str, image_size=None, on_bad_image="error", progress=True) -> RawData:
    """``torchvision:NAME[:SPLIT]`` (split ``train`` by default): download into ``root``, convert."""
    name, split = _parse_spec(spec)
    datasets = _import_torchvision_datasets()
    name, cls = _find_dataset_class(datasets, name, spec)
    root_path = Path(os.path.expanduser(root))
    kwargs = _dataset_kwargs(cls, name, split)
    source = f"torchvision:{name} ({split}) in {root_path}"
    ds = _open_dataset(cls, root_path, kwargs, source)
    n = len(ds)
    if n == 0:
        raise DataError(f"{source} is empty")
    images, labels_raw = _dataset_arrays(ds, n, source, image_size, progress)
    _, _, h, w = images.shape
    check_image_size(w, h, f"{source} (every image)")
    labels, class_names = _labels_and_names(ds, labels_raw, n, source)
    if image_size is not None:
        images = resize_images(images, image_size, progress, f"resizing {name}")
    return RawData(images, labels, class_names, source)


def _target_label(target: Any) -> Optional[int]:
    """An item's target as an int, or None when it is not one integer."""
    t = _to_numpy(target) if target is not None else None
    t = t if t is not None else target
    if isinstance(t, (int, np.integer)) or (isinstance(t, np.ndarray) and t.ndim == 0):
        return int(t)
    return None


def _torchvision_items(ds: Any, source: str, image_size: Optional[int], progress: bool):
    """Generic path: iterate ``ds[i] -> (PIL image, target)`` (sequential: datasets may not be
    thread-safe)."""
    n = len(ds)
    out: Optional[np.ndarray] = None
    labels: Optional[list[int]] = []
    bar = progress_bar(n, f"converting {source.split(' ')[0]}", progress)
    try:
        for i in range(n):
            item = ds[i]
            img, target = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
            if not isinstance(img, Image.Image):
                raise DataError(f"{source} item {i} is a {type(img).__name__}, not a PIL image")
            check_image_size(img.size[0], img.size[1], f"{source} item {i}")
            rgb = to_rgb(img, f"{source} item {i}")
            if image_size is not None:
                rgb = fit_to_size(rgb, image_size)
            arr = np.asarray(rgb, dtype=np.uint8)
            if out is None:
                out = np.empty((n, 3) + arr.shape[:2], dtype=np.uint8)
            elif arr.shape[:2] != out.shape[2:]:
                raise DataError(
                    f"{source} item {i} is {arr.shape[1]}x{arr.shape[0]} but item 0 is "
                    f"{out.shape[3]}x{out.shape[2]}: set data.image_size to resize and crop every "
                    f"image to one size"
                )
            out[i] = arr.transpose(2, 0, 1)
            if labels is not None:
                label = _target_label(target)
                if label is not None:
                    labels.append(label)
                else:
                    labels = None
            bar.update(1)
    finally:
        bar.close()
    assert out is not None
    return out, (np.asarray(labels, dtype=np.int64) if labels is not None else None)

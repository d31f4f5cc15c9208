"""Readers of the supported data sources: image folders, zips, ``.npz`` files and torchvision.

Every reader returns a :class:`RawData`: images as a C-contiguous ``(N, 3, H, W)`` uint8 numpy
array, labels (or ``None``), class names and the files skipped as unreadable.
:func:`ditlab.data.load_image_data` picks the reader and wraps the result as tensors.

Folder and zip layout (ImageFolder)
-----------------------------------
``ROOT/CLASS/any/depth/file.ext``: the class is the first path component under the root; classes
are sorted by name and files by their relative path, so the order is deterministic. Images
directly in the root (and no class folders) make an unlabeled data set; both at once is an error,
and so is a class folder without images. Files and folders whose name starts with ``.``, and
``__MACOSX``, are ignored, as are files without an image extension
(:data:`~ditlab.data.images.IMAGE_EXTENSIONS`). In a zip, one folder that wraps everything
(``train/cat/1.png``) is looked through; a consequence is that a zip holding one single class
folder reads as an unlabeled data set (one class carries no information anyway).
"""
from __future__ import annotations

import importlib
import inspect
import itertools
import math
import os
import struct
import threading
import zipfile
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image

from ditlab.data.images import (
    IMAGE_EXTENSIONS,
    BadImageError,
    DataError,
    check_image_size,
    decode_image,
    fit_to_size,
    is_image_name,
    to_rgb,
)

__all__ = [
    "RawData",
    "FileEntry",
    "FileListing",
    "list_folder",
    "list_zip",
    "decode_files",
    "read_folder",
    "read_zip",
    "read_npz",
    "read_torchvision",
    "array_to_nchw",
    "resize_images",
    "num_workers",
]

_EXTS_TEXT = " ".join(IMAGE_EXTENSIONS)


@dataclass
class RawData:
    images: np.ndarray  # (N, 3, H, W) uint8, C-contiguous
    labels: Optional[np.ndarray]  # (N,) int64, or None when unlabeled
    class_names: list[str]
    source: str
    skipped: list[str] = field(default_factory=list)
    skip_reasons: list[str] = field(default_factory=list)


@dataclass
class FileEntry:
    name: str  # as shown to the user: a path, or "archive.zip:member"
    key: Any  # what the listing's reader needs (a path, or a ZipInfo)
    label: int  # class index; 0 when unlabeled


@dataclass
class FileListing:
    entries: list[FileEntry]
    class_names: list[str]  # [] when unlabeled
    source: str
    read: Callable[[Any], bytes]  # key -> encoded bytes; must be callable from worker threads
    close: Callable[[], None] = lambda: None


def num_workers() -> int:
    """Decoding threads: Pillow releases the GIL while decoding, so about one per usable core."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(2, min(32, cpus))


def _hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _arrange(
    files: list[tuple[str, Any]], top_dirs: set[str], where: str, display: Callable[[str], str]
) -> tuple[list[FileEntry], list[str]]:
    """Turn ``(relative/posix/path, key)`` pairs into sorted labeled or unlabeled entries."""
    root_files = [(rel, key) for rel, key in files if "/" not in rel]
    groups: dict[str, list[tuple[str, Any]]] = {}
    for rel, key in files:
        if "/" in rel:
            groups.setdefault(rel.split("/", 1)[0], []).append((rel, key))
    if not root_files and not groups:
        raise DataError(
            f"no images found in {where}; accepted extensions (case-insensitive): {_EXTS_TEXT}. "
            f"Expected CLASS/file.ext (labeled) or files directly in it (unlabeled)."
        )
    if root_files and groups:
        some_file = sorted(rel for rel, _ in root_files)[0]
        some_class = sorted(groups)[0]
        raise DataError(
            f"{where} mixes images directly in it (e.g. {some_file}) with class folders "
            f"(e.g. {some_class}/): put every image in a class folder (labeled data) or every "
            f"image directly in it (unlabeled data)."
        )
    if root_files:
        root_files.sort(key=lambda item: item[0])
        return [FileEntry(display(rel), key, 0) for rel, key in root_files], []
    empty = sorted(top_dirs - set(groups))
    if empty:
        raise DataError(
            f"class folder {empty[0]!r} in {where} contains no images (accepted extensions, "
            f"case-insensitive: {_EXTS_TEXT})"
            + (f"; {len(empty) - 1} more class folder(s) are empty too" if len(empty) > 1 else "")
            + ". Remove it or add its images."
        )
    class_names = sorted(groups)
    entries: list[FileEntry] = []
    for label, cls in enumerate(class_names):
        for rel, key in sorted(groups[cls], key=lambda item: item[0]):
            entries.append(FileEntry(display(rel), key, label))
    return entries, class_names


def list_folder(path: str | os.PathLike) -> FileListing:
    """List the images of a folder in ImageFolder layout (see the module docstring)."""
    root = Path(path)
    files: list[tuple[str, Any]] = []
    top_dirs: set[str] = set()
    with os.scandir(root) as it:
        top = sorted(it, key=lambda e: e.name)
    for entry in top:
        if _hidden([entry.name]):
            continue
        if entry.is_dir():  # follows symlinks
            top_dirs.add(entry.name)
            for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not _hidden([d]))
                rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
                for fname in filenames:
                    if not _hidden([fname]) and is_image_name(fname):
                        files.append((f"{rel_dir}/{fname}", os.path.join(dirpath, fname)))
        elif is_image_name(entry.name):
            files.append((entry.name, entry.path))
    entries, class_names = _arrange(
        files, top_dirs, f"folder {root}", lambda rel: str(root / rel)
    )

    def read(key: str) -> bytes:
        with open(key, "rb") as f:
            return f.read()

    return FileListing(entries, class_names, str(root), read)


def list_zip(path: str | os.PathLike) -> FileListing:
    """List the images of a zip in ImageFolder layout, looking through one wrapping folder."""
    zpath = Path(path)
    try:
        zf = zipfile.ZipFile(zpath)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"cannot open zip archive {zpath}: {e}") from None
    try:
        members = []  # (normalised name, ZipInfo or None for directories)
        for info in zf.infolist():
            name = info.filename.replace("\\", "/").lstrip("/")
            parts = [p for p in name.split("/") if p]
            if not parts or _hidden(parts):
                continue
            members.append(("/".join(parts), info))
    finally:
        zf.close()
    images = [(name, info) for name, info in members if not info.is_dir() and is_image_name(name)]
    # One folder wrapping every image and every folder (loose non-image files such as a README
    # beside it do not count) is looked through.
    prefix = ""
    if images and all("/" in name for name, _ in images):
        firsts = {
            name.split("/", 1)[0]
            for name, info in members
            if info.is_dir() or "/" in name or is_image_name(name)
        }
        if len(firsts) == 1:
            prefix = firsts.pop() + "/"
    files = [(name[len(prefix):], info) for name, info in images]
    top_dirs: set[str] = set()
    for name, info in members:
        if not name.startswith(prefix):
            continue
        rel = name[len(prefix):]
        if "/" in rel or (info.is_dir() and rel):
            top_dirs.add(rel.split("/", 1)[0])
    where = f"zip archive {zpath}" + (f" (inside its folder {prefix[:-1]}/)" if prefix else "")
    entries, class_names = _arrange(
        files, top_dirs, where, lambda rel: f"{zpath}:{prefix}{rel}"
    )

    return FileListing(entries, class_names, str(zpath), *_zip_reader(zpath))


def _zip_reader(zpath: Path) -> tuple[Callable[[zipfile.ZipInfo], bytes], Callable[[], None]]:
    """A thread-safe member reader. Stored (uncompressed, unencrypted) members, the usual case
    for JPEG/PNG zips, are read with ``os.pread`` on one descriptor and CRC-checked; the others go
    through one ``zipfile.ZipFile`` handle per thread."""
    fd = os.open(zpath, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    local = threading.local()
    handles: list[zipfile.ZipFile] = []
    lock = threading.Lock()
    pread = getattr(os, "pread", None)

    def read(info: zipfile.ZipInfo) -> bytes:
        if pread is not None and info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
            header = pread(fd, 30, info.header_offset)
            if len(header) == 30 and header[:4] == b"PK\x03\x04":
                name_len, extra_len = struct.unpack("<HH", header[26:30])
                start = info.header_offset + 30 + name_len + extra_len
                data = pread(fd, info.compress_size, start)
                if len(data) != info.compress_size:
                    raise OSError(f"zip member cut short ({len(data)} of {info.compress_size} bytes)")
                if zlib.crc32(data) != info.CRC:
                    raise zipfile.BadZipFile("CRC mismatch: the zip member is corrupt")
                return data
        handle = getattr(local, "zf", None)
        if handle is None:
            handle = zipfile.ZipFile(zpath)
            local.zf = handle
            with lock:
                handles.append(handle)
        return handle.read(info)

    def close() -> None:
        with lock:
            for handle in handles:
                handle.close()
            handles.clear()
        try:
            os.close(fd)
        except OSError:
            pass

    return read, close


def _decode_entry(listing: FileListing, entry: FileEntry, image_size: Optional[int]):
    try:
        data = listing.read(entry.key)
    except Exception as e:  # noqa: BLE001 - permission errors, CRC errors, encrypted members...
        return BadImageError(entry.name, f"cannot read the file ({type(e).__name__}: {e})")
    try:
        return decode_image(data, entry.name, image_size)
    except DataError as e:
        return e


def decode_files(
    listing: FileListing,
    image_size: Optional[int] = None,
    on_bad_image: str = "error",
    progress: bool = True,
    workers: Optional[int] = None,
) -> RawData:
    """Decode every file of a listing with a thread pool into one ``(N, 3, H, W)`` array.

    Results are consumed in listing order, so the error reported is the first bad file in that
    order. Under ``on_bad_image="skip"`` undecodable files (:class:`BadImageError`) are left out
    and listed in ``skipped``; other errors always stop the load.
    """
    entries = listing.entries
    n = len(entries)
    workers = workers or num_workers()
    chunk = max(1, min(256, math.ceil(n / (workers * 4))))
    chunks = [range(i, min(n, i + chunk)) for i in range(0, n, chunk)]

    def work(idx: range):
        return [_decode_entry(listing, entries[i], image_size) for i in idx]

    out: Optional[np.ndarray] = None
    ref_name = ""
    kept = np.zeros(n, dtype=bool)
    count = 0
    skipped: list[str] = []
    reasons: list[str] = []
    bar = _progress_bar(n, f"reading {Path(listing.source).name}", progress)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ditlab-decode")
    try:
        # A bounded window of chunks in flight keeps decoded-but-unconsumed arrays few.
        window: deque = deque()
        pending = iter(chunks)
        for idx in itertools.islice(pending, workers * 4):
            window.append((idx, pool.submit(work, idx)))
        while window:
            idx, fut = window.popleft()
            results = fut.result()
            nxt = next(pending, None)
            if nxt is not None:
                window.append((nxt, pool.submit(work, nxt)))
            for i, res in zip(idx, results):
                if isinstance(res, BadImageError) and on_bad_image == "skip":
                    skipped.append(res.name)
                    reasons.append(res.reason)
                    continue
                if isinstance(res, Exception):
                    raise res
                if out is None:
                    h, w = res.shape[:2]
                    out = np.empty((n, 3, h, w), dtype=np.uint8)
                    ref_name = entries[i].name
                elif res.shape[:2] != out.shape[2:]:
                    h, w = res.shape[:2]
                    rh, rw = out.shape[2:]
                    raise DataError(
                        f"image {entries[i].name} is {w}x{h} but {ref_name} is {rw}x{rh}: without "
                        f"data.image_size all images must have one size. Set data.image_size "
                        f"(e.g. data.image_size={min(rh, rw)}) to resize the shorter side and "
                        f"centre-crop every image."
                    )
                out[count] = res.transpose(2, 0, 1)
                kept[i] = True
                count += 1
            bar.update(len(idx))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        listing.close()
    if count == 0:
        raise DataError(
            f"none of the {n} images in {listing.source} could be read (first: {skipped[0]}: "
            f"{reasons[0]})"
        )
    assert out is not None
    if count < n:
        out = out[:count].copy()
    labels = None
    if listing.class_names:
        labels = np.fromiter((e.label for e in entries), dtype=np.int64, count=n)[kept]
    return RawData(out, labels, list(listing.class_names), listing.source, skipped, reasons)


def read_folder(path, image_size=None, on_bad_image="error", progress=True) -> RawData:
    return decode_files(list_folder(path), image_size, on_bad_image, progress)


def read_zip(path, image_size=None, on_bad_image="error", progress=True) -> RawData:
    return decode_files(list_zip(path), image_size, on_bad_image, progress)


def _progress_bar(total: int, desc: str, enabled: bool):
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass

    class _NoBar:
        def update(self, k: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    return _NoBar()


# ---------------------------------------------------------------------------------------------
# Arrays (npz, torchvision)


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
    chunk = max(1, min(256, math.ceil(n / (workers * 4))))

    def work(start: int) -> int:
        stop = min(n, start + chunk)
        for i in range(start, stop):
            img = Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0)), "RGB")
            out[i] = np.asarray(fit_to_size(img, image_size)).transpose(2, 0, 1)
        return stop - start

    bar = _progress_bar(n, desc, progress)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ditlab-resize") as pool:
        for done in pool.map(work, range(0, n, chunk)):
            bar.update(done)
    bar.close()
    return out


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


def _labels_array(labels: Any, n: int, name: str) -> np.ndarray:
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


def _class_names_for(labels: np.ndarray, names: Optional[Sequence[str]], name: str) -> list[str]:
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


def read_npz(path, image_size=None, on_bad_image="error", progress=True) -> RawData:
    """Read an ``.npz``: ``images`` (uint8, NHWC or NCHW), optional ``labels``, ``class_names``."""
    path = Path(path)
    headers = _npz_headers(path)
    if "images" in headers:
        key = "images"
    else:
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
        key = candidates[0]
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
    name = f"array {key!r} of {path}"
    _check_uint8(arr, name)
    images = array_to_nchw(arr, name)
    n, _, h, w = images.shape
    if n == 0:
        raise DataError(f"{name} holds no images (shape {tuple(arr.shape)})")
    check_image_size(w, h, f"{name} (every image)")
    labels = None
    class_names: list[str] = []
    if labels_raw is not None:
        labels = _labels_array(labels_raw, n, f"array 'labels' of {path}")
        if names_raw is not None:
            if names_raw.dtype.kind not in "US" or names_raw.ndim != 1:
                raise DataError(
                    f"'class_names' in {path} has dtype {names_raw.dtype} and shape "
                    f"{names_raw.shape}; expected a 1-D string array"
                )
            names_raw = [x.decode() if isinstance(x, bytes) else str(x) for x in names_raw]
        class_names = _class_names_for(labels, names_raw, f"array 'class_names' of {path}")
    elif names_raw is not None:
        raise DataError(f"{path} has 'class_names' but no 'labels'; add labels=(N,) ints")
    del arr
    if image_size is not None:
        images = resize_images(images, image_size, progress, f"resizing {path.name}")
    return RawData(images, labels, class_names, str(path))


# ---------------------------------------------------------------------------------------------
# torchvision


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


def read_torchvision(spec: str, root: str, image_size=None, on_bad_image="error", progress=True) -> RawData:
    """``torchvision:NAME[:SPLIT]`` (split ``train`` by default): download into ``root``, convert."""
    rest = spec.split(":", 1)[1] if ":" in spec else spec
    name, _, split = rest.partition(":")
    name, split = name.strip(), (split.strip() or "train")
    if not name:
        raise DataError(f"data.path {spec!r}: name a torchvision data set, e.g. torchvision:CIFAR10")
    datasets = _import_torchvision_datasets()
    cls = getattr(datasets, name, None)
    if not inspect.isclass(cls):
        by_lower = {k.lower(): k for k in dir(datasets) if inspect.isclass(getattr(datasets, k))}
        if name.lower() in by_lower:
            name = by_lower[name.lower()]
            cls = getattr(datasets, name)
        else:
            raise DataError(
                f"torchvision.datasets has no data set {name!r} (from data.path {spec!r}); "
                f"e.g. torchvision:CIFAR10, torchvision:CIFAR100, torchvision:MNIST, "
                f"torchvision:FashionMNIST, torchvision:SVHN, torchvision:STL10"
            )
    root_path = Path(os.path.expanduser(root))
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
    source = f"torchvision:{name} ({split}) in {root_path}"
    try:
        root_path.mkdir(parents=True, exist_ok=True)
        ds = cls(str(root_path), **kwargs)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - network errors, checksum errors, bad arguments
        raise DataError(
            f"cannot load {source}: {type(e).__name__}: {e}. Downloading needs network access; "
            f"offline, copy the data set into {root_path} (data.root) or use a local folder/zip."
        ) from None
    n = len(ds)
    if n == 0:
        raise DataError(f"{source} is empty")
    data = _to_numpy(getattr(ds, "data", None))
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = getattr(ds, "labels", None)
    if data is not None and data.dtype == np.uint8 and data.ndim in (3, 4) and len(data) == n:
        images = array_to_nchw(data, source)
        labels_raw = _to_numpy(targets) if targets is not None else None
        if labels_raw is None and targets is not None:
            labels_raw = np.asarray(list(targets))
    else:
        images, labels_raw = _torchvision_items(ds, source, image_size, progress)
    _, _, h, w = images.shape
    check_image_size(w, h, f"{source} (every image)")
    labels = None
    class_names: list[str] = []
    if labels_raw is not None and np.asarray(labels_raw).ndim == 1 and np.asarray(labels_raw).size == n:
        labels = _labels_array(labels_raw, n, f"labels of {source}")
        classes = getattr(ds, "classes", None)
        if classes is not None and len(classes) <= int(labels.max()):
            classes = None
        class_names = _class_names_for(labels, classes, f"classes of {source}")
    if image_size is not None:
        images = resize_images(images, image_size, progress, f"resizing {name}")
    return RawData(images, labels, class_names, source)


def _torchvision_items(ds: Any, source: str, image_size: Optional[int], progress: bool):
    """Generic path: iterate ``ds[i] -> (PIL image, target)`` (sequential: datasets may not be
    thread-safe)."""
    n = len(ds)
    out: Optional[np.ndarray] = None
    labels: Optional[list[int]] = []
    bar = _progress_bar(n, f"converting {source.split(' ')[0]}", progress)
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
                t = _to_numpy(target) if target is not None else None
                t = t if t is not None else target
                if isinstance(t, (int, np.integer)) or (isinstance(t, np.ndarray) and t.ndim == 0):
                    labels.append(int(t))
                else:
                    labels = None
            bar.update(1)
    finally:
        bar.close()
    assert out is not None
    return out, (np.asarray(labels, dtype=np.int64) if labels is not None else None)

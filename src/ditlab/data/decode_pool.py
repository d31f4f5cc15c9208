"""Decoding the files of a listing with a thread pool, and the pool helpers the readers share.

A folder or zip reader produces a :class:`FileListing` (entries in their final order plus a
thread-safe ``read`` function); :func:`decode_files` decodes it with threads into one
``(N, 3, H, W)`` uint8 array (a :class:`~ditlab.data.rawdata.RawData`). :func:`num_workers`,
:func:`chunk_size` and :func:`progress_bar` are shared with the array readers' resizing.
"""
from __future__ import annotations

import itertools
import math
import os
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from ditlab.data.images import BadImageError, DataError, decode_image
from ditlab.data.rawdata import RawData

__all__ = [
    "FileEntry",
    "FileListing",
    "decode_files",
    "num_workers",
    "chunk_size",
    "progress_bar",
]


@dataclass
class FileEntry:
    name: str  # as shown to the user: a path, or "archive.zip:member"
    key: Any  # what the listing's reader needs (a path, or a ZipInfo)
    label: int  # class index; 0 when unlabeled
    rel: str = ""  # path relative to the data set root, posix: the image's name in ImageData.names


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


def chunk_size(n: int, workers: int) -> int:
    """Items per pool task: about four tasks per worker, between 1 and 256 items each."""
    return max(1, min(256, math.ceil(n / (workers * 4))))


def progress_bar(total: int, desc: str, enabled: bool):
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


def _decode_entry(listing: FileListing, entry: FileEntry, image_size: Optional[int]):
    try:
        data = listing.read(entry.key)
    except Exception as e:  # noqa: BLE001 - permission errors, CRC errors, encrypted members...
        return BadImageError(entry.name, f"cannot read the file ({type(e).__name__}: {e})")
    try:
        return decode_image(data, entry.name, image_size)
    except DataError as e:
        return e


def _in_order(
    pool: Executor, work: Callable[[range], list], chunks: Iterable[range], depth: int
) -> Iterator[tuple[range, list]]:
    """Yield ``(chunk, work(chunk))`` in order, with at most ``depth`` chunks in flight.

    A bounded window of chunks in flight keeps decoded-but-unconsumed arrays few.
    """
    window: deque = deque()
    pending = iter(chunks)
    for idx in itertools.islice(pending, depth):
        window.append((idx, pool.submit(work, idx)))
    while window:
        idx, fut = window.popleft()
        results = fut.result()
        nxt = next(pending, None)
        if nxt is not None:
            window.append((nxt, pool.submit(work, nxt)))
        yield idx, results


class _Collector:
    """Places decoded images into one ``(N, 3, H, W)`` array in listing order, noting skips."""

    def __init__(self, entries: list[FileEntry], skip_bad: bool):
        self.entries = entries
        self.skip_bad = skip_bad
        self.out: Optional[np.ndarray] = None
        self.ref_name = ""
        self.kept = np.zeros(len(entries), dtype=bool)
        self.count = 0
        self.skipped: list[str] = []
        self.reasons: list[str] = []

    def add(self, i: int, res: Any) -> None:
        """Take the result for entry ``i``: an ``(H, W, 3)`` array or the error it raised."""
        if isinstance(res, BadImageError) and self.skip_bad:
            self.skipped.append(res.name)
            self.reasons.append(res.reason)
            return
        if isinstance(res, Exception):
            raise res
        if self.out is None:
            h, w = res.shape[:2]
            self.out = np.empty((len(self.entries), 3, h, w), dtype=np.uint8)
            self.ref_name = self.entries[i].name
        elif res.shape[:2] != self.out.shape[2:]:
            h, w = res.shape[:2]
            rh, rw = self.out.shape[2:]
            raise DataError(
                f"image {self.entries[i].name} is {w}x{h} but {self.ref_name} is {rw}x{rh}: "
                f"without data.image_size all images must have one size. Set data.image_size "
                f"(e.g. data.image_size={min(rh, rw)}) to resize the shorter side and "
                f"centre-crop every image."
            )
        self.out[self.count] = res.transpose(2, 0, 1)
        self.kept[i] = True
        self.count += 1

    def result(self, listing: FileListing) -> RawData:
        n = len(self.entries)
        if self.count == 0:
            raise DataError(
                f"none of the {n} images in {listing.source} could be read (first: "
                f"{self.skipped[0]}: {self.reasons[0]})"
            )
        out = self.out
        assert out is not None
        if self.count < n:
            out = out[: self.count].copy()
        labels = None
        if listing.class_names:
            labels = np.fromiter((e.label for e in self.entries), dtype=np.int64, count=n)
            labels = labels[self.kept]
        names = [e.rel for e, kept in zip(self.entries, self.kept) if kept]
        return RawData(
            out, labels, list(listing.class_names), listing.source, self.skipped, self.reasons, names
        )


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
    chunk = chunk_size(n, workers)
    chunks = [range(i, min(n, i + chunk)) for i in range(0, n, chunk)]

    def work(idx: range):
        return [_decode_entry(listing, entries[i], image_size) for i in idx]

    collector = _Collector(entries, skip_bad=on_bad_image == "skip")
    bar = progress_bar(n, f"reading {Path(listing.source).name}", progress)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ditlab-decode")
    try:
        for idx, results in _in_order(pool, work, chunks, workers * 4):
            for i, res in zip(idx, results):
                collector.add(i, res)
            bar.update(len(idx))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        listing.close()
    return collector.result(listing)

"""Zip archives in ImageFolder layout (see :mod:`ditlab.data.folder` for the layout).

In a zip, one folder that wraps everything (``train/cat/1.png``) is looked through; a consequence
is that a zip holding one single class folder reads as an unlabeled data set (one class carries
no information anyway). Members are read from worker threads: stored (uncompressed, unencrypted)
members with ``os.pread`` and a CRC check, the others through one ``zipfile.ZipFile`` per thread.
"""
from __future__ import annotations

import os
import struct
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Optional

from ditlab.data.decode_pool import FileListing, decode_files
from ditlab.data.folder import arrange_files, is_hidden
from ditlab.data.images import DataError, is_image_name
from ditlab.data.rawdata import RawData

__all__ = ["list_zip", "read_zip"]

_Members = list[tuple[str, zipfile.ZipInfo]]  # (normalised name, ZipInfo); directories included


def _zip_members(zpath: Path) -> _Members:
    """Every member that is not hidden, with ``\\`` turned into ``/`` and empty parts dropped."""
    try:
        zf = zipfile.ZipFile(zpath)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"cannot open zip archive {zpath}: {e}") from None
    try:
        members = []
        for info in zf.infolist():
            name = info.filename.replace("\\", "/").lstrip("/")
            parts = [p for p in name.split("/") if p]
            if not parts or is_hidden(parts):
                continue
            members.append(("/".join(parts), info))
    finally:
        zf.close()
    return members


def _wrapping_prefix(members: _Members, images: _Members) -> str:
    """``"FOLDER/"`` when one folder wraps every image and every folder, else ``""``.

    Loose non-image files such as a README beside the folder do not count.
    """
    if images and all("/" in name for name, _ in images):
        firsts = {
            name.split("/", 1)[0]
            for name, info in members
            if info.is_dir() or "/" in name or is_image_name(name)
        }
        if len(firsts) == 1:
            return firsts.pop() + "/"
    return ""


def _top_dirs(members: _Members, prefix: str) -> set[str]:
    """The folders directly under ``prefix`` (the candidate class folders)."""
    top_dirs: set[str] = set()
    for name, info in members:
        if not name.startswith(prefix):
            continue
        rel = name[len(prefix):]
        if "/" in rel or (info.is_dir() and rel):
            top_dirs.add(rel.split("/", 1)[0])
    return top_dirs


def list_zip(path: str | os.PathLike) -> FileListing:
    """List the images of a zip in ImageFolder layout, looking through one wrapping folder."""
    zpath = Path(path)
    members = _zip_members(zpath)
    images = [(name, info) for name, info in members if not info.is_dir() and is_image_name(name)]
    prefix = _wrapping_prefix(members, images)
    files = [(name[len(prefix):], info) for name, info in images]
    top_dirs = _top_dirs(members, prefix)
    where = f"zip archive {zpath}" + (f" (inside its folder {prefix[:-1]}/)" if prefix else "")
    entries, class_names = arrange_files(
        files, top_dirs, where, lambda rel: f"{zpath}:{prefix}{rel}"
    )

    return FileListing(entries, class_names, str(zpath), *_zip_reader(zpath))


def _pread_stored(pread: Callable, fd: int, info: zipfile.ZipInfo) -> Optional[bytes]:
    """A stored member's bytes read straight from the file and CRC-checked; ``None`` when its
    local header does not look right (the caller then goes through ``zipfile``)."""
    header = pread(fd, 30, info.header_offset)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    data = pread(fd, info.compress_size, start)
    if len(data) != info.compress_size:
        raise OSError(f"zip member cut short ({len(data)} of {info.compress_size} bytes)")
    if zlib.crc32(data) != info.CRC:
        raise zipfile.BadZipFile("CRC mismatch: the zip member is corrupt")
    return data


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
            data = _pread_stored(pread, fd, info)
            if data is not None:
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


def read_zip(path, image_size=None, on_bad_image="error", progress=True) -> RawData:
    return decode_files(list_zip(path), image_size, on_bad_image, progress)

"""Image folders, and the ImageFolder layout rules that folders and zips share.

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

The zip side (member listing, the wrapping folder, reading members) is in
:mod:`ditlab.data.zipsource`; :func:`arrange_files` applies the rules above to both.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ditlab.data.decode_pool import FileEntry, FileListing, decode_files
from ditlab.data.images import IMAGE_EXTENSIONS, DataError, is_image_name
from ditlab.data.rawdata import RawData

__all__ = ["is_hidden", "arrange_files", "list_folder", "read_folder"]

_EXTS_TEXT = " ".join(IMAGE_EXTENSIONS)


def is_hidden(parts: Sequence[str]) -> bool:
    """Whether any path component is ignored by the layout (``.name`` or ``__MACOSX``)."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def arrange_files(
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
        return [FileEntry(display(rel), key, 0, rel) for rel, key in root_files], []
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
            entries.append(FileEntry(display(rel), key, label, rel))
    return entries, class_names


def _walk_class_folder(root: Path, folder: str) -> list[tuple[str, str]]:
    """``(relative/posix/path, path)`` of the images below one class folder, symlinks followed."""
    files: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden([d]))
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        for fname in filenames:
            if not is_hidden([fname]) and is_image_name(fname):
                files.append((f"{rel_dir}/{fname}", os.path.join(dirpath, fname)))
    return files


def _read_file(key: str) -> bytes:
    with open(key, "rb") as f:
        return f.read()


def list_folder(path: str | os.PathLike) -> FileListing:
    """List the images of a folder in ImageFolder layout (see the module docstring)."""
    root = Path(path)
    files: list[tuple[str, Any]] = []
    top_dirs: set[str] = set()
    with os.scandir(root) as it:
        top = sorted(it, key=lambda e: e.name)
    for entry in top:
        if is_hidden([entry.name]):
            continue
        if entry.is_dir():  # follows symlinks
            top_dirs.add(entry.name)
            files.extend(_walk_class_folder(root, entry.path))
        elif is_image_name(entry.name):
            files.append((entry.name, entry.path))
    entries, class_names = arrange_files(
        files, top_dirs, f"folder {root}", lambda rel: str(root / rel)
    )
    return FileListing(entries, class_names, str(root), _read_file)


def read_folder(path, image_size=None, on_bad_image="error", progress=True) -> RawData:
    return decode_files(list_folder(path), image_size, on_bad_image, progress)

"""Context sets: per-image sets of precomputed token embeddings (e.g. a text encoder's caption tokens).

An image model trained with ``data.context_path=FILE`` cross-attends to its image's row of FILE.

File format: one ``.npz`` (``np.savez``) with

=============  ===================  ===========================================================
key            dtype, shape         meaning
=============  ===================  ===========================================================
``embeddings`` float (N, M, D)      token embeddings, each row padded to M tokens
``mask``       bool (N, M)          True = real token (padding may sit anywhere); 0 / 1 floats or
                                    integers (1 = real) are accepted and converted; or instead:
``lengths``    int (N,)             the first ``lengths[i]`` tokens of row i are real
``names``      str (N,), optional   the image of each row: its name in ``ImageData.names`` (the
                                    path relative to the data set root, ``cat/0001.png``, or the
                                    row index ``"17"`` for .npz / torchvision data). Without it
                                    the rows follow the data set's order and N must equal its size.
``labels``     int (N,), optional   class of each row; ``ditlab sample --context`` uses it for a
                                    class-conditional model (otherwise sample i gets class i mod K)
``captions``   str (N,), optional   the text behind each row; kept for people, never read
=============  ===================  ===========================================================

Decisions (checked by :func:`load_context_file`, each error names the file, the key and the shapes):
- A row with no real token ("no caption") is allowed. The model then sees the learned null context,
  the same thing the unconditional pass of classifier-free guidance sees (ditlab.tasks.image.task).
- With ``names``, rows may cover more images than the data set holds (e.g. files left out as
  unreadable); every image of the data set must have a row. Names must be unique.
- Padding values are never read: they are set to zero on load (a NaN in padding would otherwise
  reach the attention output through 0 * NaN). Real tokens must be finite.
- Unknown keys are an error, so a misspelt optional key (``name``) cannot silently fall back to
  data set order.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ditlab.data.images import DataError

__all__ = ["ContextSet", "load_context_file", "align_to_images", "save_context_file", "CONTEXT_KEYS"]

CONTEXT_KEYS = ("embeddings", "mask", "lengths", "names", "labels", "captions")


@dataclass
class ContextSet:
    embeddings: torch.Tensor  # (N, M, D) float32 or float16 (as stored), zero at padding
    mask: torch.Tensor  # (N, M) bool, True = real token
    names: Optional[list[str]]  # image name of each row, or None (data set order)
    labels: Optional[torch.Tensor]  # (N,) int64 or None
    source: str  # the file, for messages

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[2])

    @property
    def full(self) -> bool:
        """Every row is M real tokens (no padding): a model can attend to it without a mask."""
        return bool(self.mask.all())

    def rows(self, index: torch.Tensor | slice) -> "ContextSet":
        """The rows ``index`` (in that order), without the padding columns no kept row uses."""
        emb, mask = self.embeddings[index], self.mask[index]
        used = mask.any(dim=0).nonzero()
        width = int(used.max()) + 1 if len(used) else 1  # keep one column: shapes stay (B, M >= 1, D)
        names = None
        if self.names is not None:
            picked = torch.arange(len(self))[index].tolist()
            names = [self.names[i] for i in picked]
        labels = self.labels[index] if self.labels is not None else None
        return ContextSet(emb[:, :width].contiguous(), mask[:, :width].contiguous(), names, labels, self.source)

    def check_dim(self, dim: int, what: str) -> None:
        if self.dim != dim:
            raise DataError(f"key 'embeddings' of {self.source} has shape {tuple(self.embeddings.shape)}: "
                            f"D={self.dim}, but {what} expects D={dim}")


def _open(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"context file {path} does not exist")
    if path.suffix.lower() != ".npz":
        raise DataError(f"context file {path} must be an .npz (np.savez) with 'embeddings' and 'mask' or "
                        f"'lengths'; see docs/context_sets.md")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as e:  # object arrays (e.g. a list of Python strings saved without dtype=str)
        raise DataError(f"cannot read {path}: {e}; save strings as np.array(names, dtype=str)") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"cannot read context file {path} as an .npz: {e}") from None


def _embeddings(arrays: dict, where: str) -> np.ndarray:
    if "embeddings" not in arrays:
        raise DataError(f"{where} has no key 'embeddings' (float (N, M, D)); its keys: {sorted(arrays)}")
    emb = arrays["embeddings"]
    if emb.ndim != 3 or min(emb.shape) == 0:
        raise DataError(f"key 'embeddings' of {where} has shape {emb.shape}; expected (N, M, D) with N, M, D >= 1")
    if emb.dtype.kind != "f":
        raise DataError(f"key 'embeddings' of {where} has dtype {emb.dtype}; expected a float dtype")
    return emb


def _mask(arrays: dict, n: int, m: int, where: str) -> np.ndarray:
    has_mask, has_lengths = "mask" in arrays, "lengths" in arrays
    if has_mask == has_lengths:
        raise DataError(f"{where} needs exactly one of key 'mask' (bool (N, M) = ({n}, {m})) and key "
                        f"'lengths' (int (N,) = ({n},)); it has {'both' if has_mask else 'neither'}")
    if has_mask:
        mask = arrays["mask"]
        if mask.shape != (n, m):
            raise DataError(f"key 'mask' of {where} has shape {mask.shape}; expected (N, M) = ({n}, {m}) "
                            f"to match 'embeddings'")
        return _bool_mask(mask, where)
    lengths = arrays["lengths"]
    if lengths.dtype.kind not in "iu":
        raise DataError(f"key 'lengths' of {where} has dtype {lengths.dtype}; expected integers")
    if lengths.shape != (n,):
        raise DataError(f"key 'lengths' of {where} has shape {lengths.shape}; expected (N,) = ({n},)")
    bad = np.flatnonzero((lengths < 0) | (lengths > m))
    if len(bad):
        raise DataError(f"key 'lengths' of {where}: row {bad[0]} has length {lengths[bad[0]]}, outside [0, M={m}]")
    return np.arange(m)[None, :] < lengths[:, None]


def _bool_mask(mask: np.ndarray, where: str) -> np.ndarray:
    """A bool mask as it is; float or integer 0 / 1 (1 = real token) converted; anything else refused."""
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype.kind not in "fiu":
        raise DataError(f"key 'mask' of {where} has dtype {mask.dtype}; expected bool (True = real token) or "
                        f"0 / 1 numbers (1 = real token), or save 'lengths' instead")
    bad = np.flatnonzero((mask != 0) & (mask != 1))  # NaN is neither
    if len(bad):
        at = tuple(int(i) for i in np.unravel_index(bad[0], mask.shape))
        raise DataError(f"key 'mask' of {where} has dtype {mask.dtype} and holds {mask[at].item()!r} at "
                        f"[row, column] = {list(at)}; a numeric mask may hold only 0 (padding) and 1 (real token)")
    return mask != 0


def _strings(arrays: dict, key: str, n: int, where: str) -> Optional[list[str]]:
    if key not in arrays:
        return None
    arr = arrays[key]
    if arr.dtype.kind not in "US" or arr.shape != (n,):
        raise DataError(f"key {key!r} of {where} has dtype {arr.dtype} and shape {arr.shape}; "
                        f"expected strings of shape (N,) = ({n},)")
    return [x.decode() if isinstance(x, bytes) else str(x) for x in arr.tolist()]


def _labels(arrays: dict, n: int, where: str) -> Optional[torch.Tensor]:
    if "labels" not in arrays:
        return None
    labels = arrays["labels"]
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise DataError(f"key 'labels' of {where} has dtype {labels.dtype} and shape {labels.shape}; "
                        f"expected integers of shape (N,) = ({n},)")
    if (labels < 0).any():
        raise DataError(f"key 'labels' of {where} holds a negative label at row {np.flatnonzero(labels < 0)[0]}")
    return torch.from_numpy(labels.astype(np.int64))


def _first_duplicate(names: list[str]) -> str:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    raise AssertionError("no duplicate")


def load_context_file(path: str | os.PathLike) -> ContextSet:
    """Read and check a context file (format in the module docstring)."""
    path = Path(os.path.expanduser(os.fspath(path)))
    where = f"context file {path}"
    arrays = _open(path)
    unknown = sorted(set(arrays) - set(CONTEXT_KEYS))
    if unknown:
        raise DataError(f"{where} has unknown key(s) {unknown}; known keys: {list(CONTEXT_KEYS)}")
    emb = _embeddings(arrays, where)
    n, m, _ = emb.shape
    mask = _mask(arrays, n, m, where)
    # float16 stays float16 (half the device memory); everything else becomes float32.
    emb = np.where(mask[:, :, None], emb, 0).astype(np.float16 if emb.dtype == np.float16 else np.float32)
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=(1, 2)))
    if len(bad):
        raise DataError(f"key 'embeddings' of {where}: row {bad[0]} has a non-finite value in a real token "
                        f"({len(bad)} row(s) affected)")
    names = _strings(arrays, "names", n, where)
    if names is not None and len(set(names)) != n:
        raise DataError(f"key 'names' of {where} names the image {_first_duplicate(names)!r} more than once")
    _strings(arrays, "captions", n, where)  # checked for shape only: people read them, ditlab does not
    labels = _labels(arrays, n, where)
    return ContextSet(torch.from_numpy(emb), torch.from_numpy(mask), names, labels, str(path))


def align_to_images(ctx: ContextSet, image_names: list[str], data_source: str) -> ContextSet:
    """The rows of ``ctx`` in the order of a data set's images (``ImageData.names``)."""
    n = len(image_names)
    if ctx.names is None:
        if len(ctx) != n:
            raise DataError(f"key 'embeddings' of context file {ctx.source} has shape "
                            f"{tuple(ctx.embeddings.shape)}: N={len(ctx)} rows, but the data set {data_source} "
                            f"holds {n} images. Without key 'names' rows follow the data set's order one to "
                            f"one; save 'names' (e.g. {image_names[0]!r}) to align them by image")
        return ctx.rows(slice(None))
    row_of = {name: i for i, name in enumerate(ctx.names)}
    missing = [name for name in image_names if name not in row_of]
    if missing:
        raise DataError(f"key 'names' of context file {ctx.source} lacks {len(missing)} of the {n} images of "
                        f"{data_source}, e.g. {missing[0]!r} (the file names rows like {ctx.names[0]!r}; "
                        f"names are paths relative to the data set root, or row indices for array data)")
    return ctx.rows(torch.tensor([row_of[name] for name in image_names]))


def save_context_file(path: str | os.PathLike, embeddings: np.ndarray, mask: np.ndarray,
                      names: Optional[list[str]] = None, labels: Optional[np.ndarray] = None,
                      captions: Optional[list[str]] = None) -> Path:
    """Write a context file and read it back through the checks (a file that cannot load is not left)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise DataError(f"context file {path} must end in .npz")
    # 0 / 1 numbers become bool here; any other value is refused (astype(bool) would make 0.5 a real token)
    arrays = {"embeddings": embeddings, "mask": _bool_mask(np.asarray(mask), f"context file {path}")}
    if names is not None:
        arrays["names"] = np.array(names, dtype=str)
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    if captions is not None:
        arrays["captions"] = np.array(captions, dtype=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.savez would otherwise append .npz to other names
        np.savez(f, **arrays)
    try:
        load_context_file(path)
    except DataError:
        path.unlink()
        raise
    return path

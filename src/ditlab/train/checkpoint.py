"""Atomic, resumable checkpoints.

    RUN/checkpoints/step_00001000/{model.safetensors, ema.safetensors (optional), state.pt}
    RUN/checkpoints/latest          folder name of the newest complete checkpoint
    RUN/checkpoints/best            JSON: the best checkpoint so far by train.eval_metric (and its value)

Weights live in safetensors so sampling never unpickles anything nor reads the (large) optimizer
state; the rest is plain data in ``state.pt``, read back with ``torch.load(weights_only=True)``.
A checkpoint is built in a hidden temp folder, renamed into place, and only then named by
``latest``, so a crash or a full disk at any moment leaves the previous checkpoint loadable. (Saving
a step that exists moves the old copy aside first; if the saver dies right then, the old copy is
what :func:`find_latest_checkpoint` returns and the next save puts it back.)
A checkpoint may carry extra weight files (``extra_weights``: e.g. the power-function EMAs of post-hoc
EMA, ditlab.train.posthoc_ema), written and validated like the others.
:func:`save_weights_checkpoint` writes a folder with EMA weights and ``state.pt`` only (``has_model``
false, no optimizer: a post-hoc EMA reconstruction); it samples like any checkpoint, and loading its
model or optimizer state is an error that says so.
Only one process (rank 0) should call :func:`save_checkpoint`. Rotation (``keep``) never deletes
the folder ``best`` names; a corrupt best is skipped with a warning (:func:`find_best_checkpoint`).
"""
from __future__ import annotations

import errno
import io
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ditlab.models.wrappers import strip_wrapper_prefix, unwrap_model

CHECKPOINT_FORMAT_VERSION = 1
MODEL_FILE, EMA_FILE, STATE_FILE, LATEST_FILE = "model.safetensors", "ema.safetensors", "state.pt", "latest"
BEST_FILE = "best"
REQUIRED_STATE_KEYS = ("format_version", "step")
_STEP_DIR = re.compile(r"^step_(\d+)$")
# The previous copy of a step while the same step is saved again; a kill can leave one behind.
_OLD_DIR = re.compile(r"^\.old-(step_\d+)-\d+$")
# Optimizer settings that describe the implementation on the loading machine, not the training state.
_OPTIMIZER_IMPL_KEYS = ("foreach", "fused", "capturable", "differentiable")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, found or read; the message names the path."""


class CheckpointState(dict):
    """The state dict :func:`load_checkpoint` returns: a missing key raises :class:`CheckpointError`
    naming the file and the key (not a bare KeyError), e.g. a checkpoint from another program."""

    def __init__(self, data: dict, path: Path):
        super().__init__(data)
        self.path = path

    def __missing__(self, key):
        raise CheckpointError(f"{self.path} has no key {key!r} (keys: {', '.join(map(str, self)) or 'none'}); "
                              "was it written by another program or an older ditlab?")


def plain_state_dict(obj) -> dict[str, torch.Tensor]:
    """Module / mapping / object with ``state_dict()`` -> {plain name: own contiguous CPU copy}.

    Copying each tensor un-shares tied weights (safetensors refuses shared storage) and makes views
    contiguous; both names of a tied pair are kept so strict loading still works.
    """
    sd = unwrap_model(obj).state_dict() if isinstance(obj, nn.Module) else \
        obj if isinstance(obj, Mapping) else obj.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        name = strip_wrapper_prefix(key)
        if not isinstance(t, torch.Tensor) or name in out:
            raise CheckpointError(f"state_dict entry {key!r} is not a tensor or duplicates {name!r}")
        t = t.detach().to("cpu", copy=True)
        out[name] = t if t.is_contiguous() else t.contiguous()
    return out


def capture_rng_state() -> dict:
    """Python, numpy, torch-CPU and every CUDA device's RNG state, as weights_only-loadable data."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    cuda = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {"python": [version, list(internal), gauss], "torch": torch.get_rng_state(), "cuda": cuda,
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def restore_rng_state(d: dict) -> None:
    """Inverse of :func:`capture_rng_state`; CUDA states are restored for the devices both have."""
    version, internal, gauss = d["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = d["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(d["torch"].cpu())
    if d.get("cuda") and torch.cuda.is_available():
        if len(d["cuda"]) != torch.cuda.device_count():
            warnings.warn(f"checkpoint has RNG state for {len(d['cuda'])} CUDA devices, "
                          f"{torch.cuda.device_count()} are visible; restoring the overlap")
        for i, s in enumerate(d["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), i)


# ---------------------------------------------------------------------------------------- save
def _fsync(path: Path) -> None:
    if os.name == "nt" and path.is_dir():
        return  # Windows cannot open a directory for fsync
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step_dirs(root: Path) -> list[Path]:
    """``step_*`` folders, newest step first."""
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def _orphaned_old_copies(root: Path) -> dict[str, Path]:
    """``.old-step_X-PID`` folders whose ``step_X`` is missing: a saver was killed while re-saving
    step X, between moving the old copy aside and putting the new one in place."""
    found = {}
    for p in root.iterdir():
        if (m := _OLD_DIR.match(p.name)) and p.is_dir() and not (root / m.group(1)).exists():
            found[m.group(1)] = p
    return found


def _clear_leftovers(root: Path) -> None:
    """Remove what a killed save left; put an orphaned old copy back under its step name."""
    for stale in [*root.glob(".tmp-step_*"), *root.glob(".latest.tmp-*"), *root.glob(".best.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    for name, old in _orphaned_old_copies(root).items():
        os.replace(old, root / name)
    for old in root.glob(".old-step_*"):  # the new copy made it into place: the old one is garbage
        shutil.rmtree(old, ignore_errors=True)


def _disk_full_hint(e: BaseException, root: Path) -> str:
    """' The disk looks full (N MiB free ...).' when the error is a full disk or quota, else ''.

    torch.save writing to a path reports a short write as a RuntimeError ("unexpected pos",
    "file write failed"), without the errno; safetensors wraps the OS message in its own error.
    """
    text = f"{e} {e.__cause__ or ''}"
    full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
        s in text for s in ("No space left", "Disk quota exceeded", "unexpected pos", "file write failed"))
    if not full:
        return ""
    try:
        free = f" ({shutil.disk_usage(root).free / 2**20:.0f} MiB free in {root})"
    except OSError:
        free = ""
    return f" The disk looks full{free}: free some space, or lower train.keep_checkpoints."


def save_checkpoint(run_dir, step: int, model: nn.Module, optimizer=None, ema=None,
                    state: dict | None = None, keep: int = 3, extra_weights: Mapping | None = None) -> Path:
    """Write ``RUN/checkpoints/step_{step:08d}`` atomically, point ``latest`` at it, keep ``keep``.

    ``ema``: a module, a state dict, or anything with ``state_dict()`` (e.g. :class:`EMA`).
    ``state``: the caller's plain data (data position, config dict, extras); it is checked to load
    with ``weights_only=True`` before anything is written. RNG is captured here unless ``state``
    already has ``"rng"`` (e.g. gathered from all ranks). ``keep <= 0`` keeps every checkpoint.
    ``extra_weights``: {file name (``*.safetensors``): module / state dict} written beside the model;
    their names are listed in the state (``extra_weights``), so a checkpoint missing one is invalid.
    """
    step, payload = int(step), dict(state or {})
    if {"format_version", "optimizer", "has_ema", "extra_weights"} & payload.keys() or payload.get("step", step) != step:
        raise ValueError("state may not set format_version/optimizer/has_ema/extra_weights, nor a different step")
    extra = dict(extra_weights or {})
    for file in extra:
        if not file.endswith(".safetensors") or Path(file).name != file or file in (MODEL_FILE, EMA_FILE):
            raise ValueError(f"extra weight file names must be plain *.safetensors names other than "
                             f"{MODEL_FILE}/{EMA_FILE}, got {file!r}")
    payload.setdefault("rng", capture_rng_state())
    payload.update(format_version=CHECKPOINT_FORMAT_VERSION, step=step, has_ema=ema is not None)
    if extra:
        payload["extra_weights"] = sorted(extra)
    try:  # fail now, not at resume time, if a Path/numpy/dataclass slipped into state
        buf = io.BytesIO()
        torch.save(payload, buf)
        torch.load(io.BytesIO(buf.getvalue()), weights_only=True, map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"state cannot be stored: it must hold only tensors, numbers, strings and "
                              f"lists/dicts of them ({type(e).__name__}: {e})") from e
    payload["optimizer"] = optimizer.state_dict() if optimizer is not None else None

    root, name, pid = Path(run_dir) / "checkpoints", f"step_{step:08d}", os.getpid()
    final = root / name
    root.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(root)  # of a killed save
    meta = {"format_version": str(CHECKPOINT_FORMAT_VERSION), "step": str(step)}
    _write_folder(final, ((MODEL_FILE, model), (EMA_FILE, ema), *sorted(extra.items())), payload, meta,
                  f"failed to save checkpoint step {step} to {final}", f" Older checkpoints in {root} were kept.")
    latest_tmp = root / f".latest.tmp-{pid}"
    try:
        with open(latest_tmp, "w", encoding="utf-8") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(latest_tmp, root / LATEST_FILE)
        _fsync(root)
    except Exception as e:
        _remove_quietly(latest_tmp)
        raise CheckpointError(f"checkpoint {final} was written but {root / LATEST_FILE} could not be "
                              f"updated ({type(e).__name__}: {e}); it still names an older one."
                              f"{_disk_full_hint(e, root)}") from e
    best = (read_best_pointer(root) or {}).get("checkpoint")  # rotation never deletes the best
    for p in ([p for p in _step_dirs(root) if p != final and p.name != best][keep - 1:] if keep > 0 else []):
        shutil.rmtree(p, ignore_errors=True)  # a leftover old checkpoint only costs disk
    return final


def _remove_quietly(tmp: Path) -> None:
    """Remove a temp file after a failed write, if it is there: the cleanup must not replace the write's error
    with its own (a folder that is a file makes unlink raise NotADirectoryError, not FileNotFoundError)."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def write_weights_file(path, weights, metadata: dict[str, str] | None = None) -> Path:
    """One .safetensors file written atomically (a temp name in the same folder, fsync, rename): a
    crash leaves the old file or none, never a partial one. ``weights``: as for :func:`plain_state_dict`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(plain_state_dict(weights), str(tmp), metadata=metadata)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except Exception as e:
        _remove_quietly(tmp)
        raise CheckpointError(f"failed to write {path}: {type(e).__name__}: {e}.{_disk_full_hint(e, path.parent)}") from e
    return path


def save_weights_checkpoint(folder, ema, state: dict, metadata: dict[str, str] | None = None) -> Path:
    """A checkpoint folder holding EMA weights and ``state.pt`` only (no model weights, no optimizer),
    written atomically like :func:`save_checkpoint` (temp folder, rename; an existing folder of that
    name is replaced). For weights made after training, e.g. a post-hoc EMA reconstruction: it samples
    like any checkpoint (``--weights ema``), and its ``has_model: false`` makes loading its model or
    optimizer state an error that names it, so it is never mistaken for a training state. It is not a
    ``step_*`` folder: ``latest``, ``best`` and rotation never see it."""
    folder = Path(folder)
    if _STEP_DIR.match(folder.name):
        raise ValueError(f"a weights-only checkpoint may not take a step_* name (resume would find it): {folder}")
    payload = dict(state)
    if {"format_version", "optimizer", "has_ema", "has_model"} & payload.keys() or "step" not in payload:
        raise ValueError("state must set step and may not set format_version/optimizer/has_ema/has_model")
    payload.update(format_version=CHECKPOINT_FORMAT_VERSION, step=int(payload["step"]), has_ema=True,
                   has_model=False, optimizer=None)
    folder.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": str(CHECKPOINT_FORMAT_VERSION), "step": str(payload["step"]), **(metadata or {})}
    _write_folder(folder, ((EMA_FILE, ema),), payload, meta, f"failed to write {folder}")
    return folder


def _write_folder(final: Path, weights, payload: dict, meta: dict[str, str], failure: str, kept: str = "") -> None:
    """The checkpoint folder ``final`` written atomically: every (file, module / state dict) of ``weights``
    (None skipped) and ``state.pt`` into a temp folder, fsynced, then renamed over ``final``; an existing
    ``final`` (the same step saved twice) is kept aside until the new one is in place and restored if the
    write fails. A failure is a CheckpointError starting with ``failure`` (``kept`` appended)."""
    root, pid = final.parent, os.getpid()
    tmp, old = root / f".tmp-{final.name}-{pid}", root / f".old-{final.name}-{pid}"
    try:
        tmp.mkdir()
        for file, obj in weights:
            if obj is not None:
                save_file(plain_state_dict(obj), str(tmp / file), metadata=meta)
                _fsync(tmp / file)
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync(root)
    except BaseException as e:  # also KeyboardInterrupt: never leave a half-written folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.replace(old, final)
        if not isinstance(e, Exception):
            raise
        raise CheckpointError(f"{failure}: {type(e).__name__}: {e}.{_disk_full_hint(e, root)}{kept}") from e
    shutil.rmtree(old, ignore_errors=True)


def _weights_only_error(folder: Path, st: dict, what: str) -> CheckpointError:
    note = st.get("note") or "written after training"
    return CheckpointError(f"{folder} holds EMA weights only ({note}): it has no {what}, so it cannot be resumed "
                           "from or loaded as raw model weights; use its EMA weights (--weights ema)")


def _checkpoints_root(run_dir) -> Path:
    root = Path(run_dir)
    return root if root.name == "checkpoints" and not (root / "checkpoints").is_dir() else root / "checkpoints"


def write_best_pointer(run_dir, checkpoint: str, record: dict) -> Path:
    """Point ``RUN/checkpoints/best`` at the folder ``checkpoint`` (a ``step_*`` name), atomically like
    ``latest``. The file is JSON: ``{"checkpoint", **record}`` (record: metric, value, mode, step), so a
    resumed run compares against the stored value."""
    if not _STEP_DIR.match(checkpoint):
        raise ValueError(f"best must name a step_* folder, got {checkpoint!r}")
    root = _checkpoints_root(run_dir)
    tmp, target = root / f".best.tmp-{os.getpid()}", root / BEST_FILE
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"checkpoint": checkpoint, **record}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync(root)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not update {target} ({type(e).__name__}: {e}); it still names the "
                              f"previous best.{_disk_full_hint(e, root)}") from e
    return target


def read_best_pointer(run_dir) -> dict | None:
    """The JSON of ``RUN/checkpoints/best`` (not validated against its folder), or None when there is
    none or it is unreadable."""
    path = _checkpoints_root(run_dir) / BEST_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("checkpoint"), str) else None


def find_best_checkpoint(run_dir) -> tuple[Path, dict] | None:
    """(folder, record) of the checkpoint ``best`` names; None, with a warning naming the pointer and the
    reason, when it is unreadable or its folder is missing or incomplete; None without a warning when
    the run has no best yet. Unlike ``latest`` there is no fallback: another checkpoint is not the best."""
    root = _checkpoints_root(run_dir)
    path = root / BEST_FILE
    if not path.is_file():
        return None
    record = read_best_pointer(root)
    if record is None:
        warnings.warn(f"unusable best checkpoint pointer {path} (not the JSON ditlab writes); skipped")
        return None
    name = record["checkpoint"]
    reason = _validate(root / name) if _STEP_DIR.match(name) else f"not a step_* name: {name!r}"
    if reason is not None:
        warnings.warn(f"unusable best checkpoint {root / name} skipped (named by {path}): {reason}")
        return None
    return root / name, record


# ---------------------------------------------------------------------------------------- load
def _read_state(path: Path, map_location="cpu", mmap: bool = False) -> dict:
    try:
        st = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        raise CheckpointError(f"cannot read {path} (missing, truncated or corrupt?): {type(e).__name__}: {e}") from e
    if not isinstance(st, dict):
        raise CheckpointError(f"{path} holds a {type(st).__name__}, not a checkpoint state dict")
    for key in REQUIRED_STATE_KEYS:
        if key not in st:
            raise CheckpointError(f"{path} is missing required key {key!r}")
    if st["format_version"] > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {st['format_version']}, newer than this "
                              f"ditlab reads ({CHECKPOINT_FORMAT_VERSION})")
    return CheckpointState(st, path)


def _read_weights(path: Path, device="cpu") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return load_file(str(path), device=device)
    except Exception as e:
        raise CheckpointError(f"cannot read {path} (truncated or corrupt?): {type(e).__name__}: {e}") from e


def _validate(folder: Path) -> str | None:
    """Cheap completeness check (headers parse, state loads memory-mapped): None or the reason."""
    try:
        st = _read_state(folder / STATE_FILE, mmap=True)
        for file in [MODEL_FILE] + ([EMA_FILE] if st.get("has_ema") else []) + list(st.get("extra_weights") or []):
            if not (folder / file).is_file():
                return f"{folder / file} is missing"
            try:  # safetensors checks the file is as long as its header says
                with safe_open(str(folder / file), framework="pt"):
                    pass
            except Exception as e:
                return f"{folder / file} is unreadable: {e}"
    except CheckpointError as e:
        return str(e)
    return None


def find_latest_checkpoint(run_dir) -> Path | None:
    """The folder ``latest`` names; if unusable, the newest valid ``step_*``, with a warning.

    None when the run has no checkpoints yet; :class:`CheckpointError` when it has some but none
    is valid, so a run never silently restarts from scratch over a broken history.
    """
    root = Path(run_dir)
    root = root if root.name == "checkpoints" and not (root / "checkpoints").is_dir() else root / "checkpoints"
    if not root.is_dir():
        return None
    bad: dict[Path, str] = {}
    if (root / LATEST_FILE).is_file():
        named = (root / LATEST_FILE).read_text(encoding="utf-8").strip()
        reason = _validate(root / named) if _STEP_DIR.match(named) else f"not a step_* name: {named!r}"
        if reason is None:
            return root / named
        bad[root / named] = reason
    # An orphaned old copy stands in for its step (it is put back by the next save).
    candidates = sorted([(int(_STEP_DIR.match(p.name).group(1)), p) for p in _step_dirs(root)] +
                        [(int(_STEP_DIR.match(n).group(1)), p) for n, p in _orphaned_old_copies(root).items()],
                        key=lambda c: c[0], reverse=True)
    for _, folder in candidates:
        if folder in bad:
            continue
        if (reason := _validate(folder)) is None:
            skipped = "; ".join(f"{p}: {r}" for p, r in bad.items()) or f"{root / LATEST_FILE} is missing"
            warnings.warn(f"unusable checkpoint(s) skipped ({skipped}); using {folder}")
            return folder
        bad[folder] = reason
    if bad:
        raise CheckpointError(f"no valid checkpoint in {root}:\n" + "\n".join(f"  {p}: {r}" for p, r in bad.items()))
    return None


def timed_seconds_of(segments: list[dict]) -> float:
    """Timed training seconds of a run's segments (state["segments"]): what a resumed time-limited run has
    used of train.time_limit. Segments saved before they recorded their time count 0."""
    return float(sum(seg.get("timed_seconds") or 0.0 for seg in segments))


def segment_timed_steps(seg: dict, untimed_steps: int) -> int:
    """Timed steps of one segment (state["segments"]), the steps behind its timed seconds: its steps after its own
    `untimed_steps` (the clock starts anew in each segment, after its compilation). A segment saved before
    segments recorded their timed steps counts its steps past `untimed_steps`; one without timed seconds, 0."""
    if "timed_steps" in seg:
        return int(seg["timed_steps"])
    if not seg.get("timed_seconds"):
        return 0
    return max(0, seg["end_step"] - seg["start_step"] - untimed_steps)


def timed_seconds_trained(run_dir) -> float:
    """Timed training seconds behind a run's latest checkpoint (:func:`timed_seconds_of` its segments); 0
    without a checkpoint. Reads the state memory-mapped: the optimizer's moments are not loaded."""
    folder = find_latest_checkpoint(run_dir)
    if folder is None:
        return 0.0
    return timed_seconds_of(_read_state(folder / STATE_FILE, mmap=True).get("segments") or [])


def _resolve(path_or_run_dir) -> Path:
    """A checkpoint folder from a folder, a run dir (its latest), or a pointer file RUN/checkpoints/best
    (the folder it names; an error, not a fallback, when unusable) or RUN/checkpoints/latest."""
    p = Path(path_or_run_dir)
    if (p / STATE_FILE).is_file() or _STEP_DIR.match(p.name):
        return p
    if p.name == BEST_FILE and p.is_file():
        found = find_best_checkpoint(p.parent)  # a corrupt pointer or folder: warned about, then None
        if found is None:
            raise CheckpointError(f"{p} names no usable checkpoint (see the warning above); give a step folder "
                                  "or the run directory (its latest)")
        return found[0]
    if p.name == LATEST_FILE and p.is_file():
        p = p.parent
    if (found := find_latest_checkpoint(p)) is None:
        raise CheckpointError(f"no checkpoint found under {p}")
    return found


def _load_into(module: nn.Module, weights: dict, strict: bool, path: Path) -> None:
    module = unwrap_model(module)
    own = module.state_dict()
    problems = {
        "shape mismatch": [f"{k} checkpoint {tuple(w.shape)} vs model {tuple(own[k].shape)}"
                           for k, w in weights.items() if k in own and w.shape != own[k].shape],
        "missing from checkpoint": sorted(own.keys() - weights.keys()),
        "unexpected in checkpoint": sorted(weights.keys() - own.keys())}
    if any(problems.values()):
        msg = f"{path} does not match {type(module).__name__}:" + "".join(
            f"\n  {label} ({len(v)}): " + ", ".join(v[:20]) + (" ..." if len(v) > 20 else "")
            for label, v in problems.items() if v)
        if strict:
            raise CheckpointError(msg)
        warnings.warn(msg + "\n  (strict=False: loading the keys that fit)")
    module.load_state_dict({k: w for k, w in weights.items() if k in own and w.shape == own[k].shape},
                           strict=False)


def _load_optimizer(optimizer, opt_state: dict) -> None:
    """``optimizer.load_state_dict`` that keeps the loading optimizer's implementation.

    torch copies every param-group setting from the file, so a GPU checkpoint (fused AdamW, lr a
    device tensor) would make a CPU run's optimizer fused, and a CPU checkpoint would silently turn
    a GPU run's fused AdamW into foreach (which ignores the ``found_inf`` the sync-free non-finite
    guard relies on). The implementation flags and the lr's type stay as built; the lr value, the
    hyperparameters and the moments come from the checkpoint.
    """
    parts = getattr(optimizer, "parts", None)
    if isinstance(parts, dict):  # optim.name=muon (ditlab.train.optim.MuonAdamW): each part as an optimizer
        from ditlab.train.optim import part_state

        for name, part in parts.items():
            _load_optimizer(part, part_state(opt_state, name))
        return
    if not isinstance(optimizer, torch.optim.Optimizer):  # some other object with a state_dict
        optimizer.load_state_dict(opt_state)
        return
    if isinstance(opt_state, dict) and "parts" in opt_state:
        raise ValueError(f"the file holds a Muon + AdamW state (optim.name=muon, parts {sorted(opt_state['parts'])}); "
                         "this run's optimizer is a single AdamW (optim.name=adamw)")
    own = [({k: g[k] for k in _OPTIMIZER_IMPL_KEYS if k in g}, g.get("lr")) for g in optimizer.param_groups]
    optimizer.load_state_dict(opt_state)
    for group, (impl, lr) in zip(optimizer.param_groups, own):
        group.update(impl)
        if isinstance(lr, torch.Tensor):  # keep the device tensor the training loop fills in place
            lr.fill_(float(group["lr"]))
            group["lr"] = lr
        elif isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor):  # fused/capturable count on the device (fp32), the others on the CPU
                optimizer.state[p]["step"] = step.to(p.device, torch.float32) if on_device else step.to("cpu")


def load_checkpoint(path_or_run_dir, model: nn.Module | None = None, optimizer=None, ema=None,
                    map_location="cpu", strict: bool = True) -> dict:
    """Load a checkpoint folder (or a run dir's latest) into the given objects; return its state.

    The dict holds ``step``, ``rng``, ``format_version``, ``has_ema``, the caller's own keys and
    ``checkpoint_dir``. The optimizer state goes to ``optimizer`` and is not returned (it is twice
    the model's size). RNG is *not* restored here: call :func:`restore_rng_state` if wanted.
    """
    folder = _resolve(path_or_run_dir)
    st = _read_state(folder / STATE_FILE, map_location)
    if st.get("has_model", True) is False:  # save_weights_checkpoint: say so, not "file missing"
        if model is not None:
            raise _weights_only_error(folder, st, f"{MODEL_FILE}")
        if optimizer is not None:
            raise _weights_only_error(folder, st, "optimizer state")
    if model is not None:
        _load_into(model, _read_weights(folder / MODEL_FILE), strict, folder / MODEL_FILE)
    if ema is not None:
        if not (folder / EMA_FILE).is_file():
            raise CheckpointError(f"{folder} has no {EMA_FILE} (saved without EMA); pass ema=None")
        weights = _read_weights(folder / EMA_FILE)
        target = ema if isinstance(ema, nn.Module) else getattr(ema, "module", None)
        if isinstance(target, nn.Module):
            _load_into(target, weights, strict, folder / EMA_FILE)
        elif isinstance(ema, dict):
            ema.update(weights)
        else:
            ema.load_state_dict(weights)
    opt_state = st.pop("optimizer", None)
    if optimizer is not None:
        if opt_state is None:
            raise CheckpointError(f"{folder / STATE_FILE} has no optimizer state (saved with optimizer=None)")
        try:
            _load_optimizer(optimizer, opt_state)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"optimizer state in {folder / STATE_FILE} does not fit: {e}") from e
    st["checkpoint_dir"] = str(folder)
    return st


def load_weights(path, which: str = "ema", device="cpu") -> dict[str, torch.Tensor]:
    """Weights only, for sampling: ``path`` is a run dir, a checkpoint folder or a .safetensors file."""
    if which not in ("ema", "model"):
        raise ValueError(f"which must be 'ema' or 'model', got {which!r}")
    p = Path(path)
    if p.suffix == ".safetensors":
        return _read_weights(p, device)
    file = _resolve(p) / (EMA_FILE if which == "ema" else MODEL_FILE)
    if not file.is_file() and which == "model" and (file.parent / STATE_FILE).is_file():
        st = _read_state(file.parent / STATE_FILE)
        if st.get("has_model", True) is False:
            raise _weights_only_error(file.parent, st, MODEL_FILE)
    if not file.is_file() and which == "ema":
        raise CheckpointError(f"{file} does not exist (checkpoint saved without EMA); use --weights model")
    return _read_weights(file, device)

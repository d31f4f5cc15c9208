"""Which training networks this machine has compiled before: a marker file beside torch.compile's on-disk cache.

Why: a training's set-up (its wall time less its timed seconds, mostly compiling the first steps) took 40-50 s on
an H100 for a network new to the machine, and 3-4 s for one that an earlier training on the same machine had
compiled (inductor's caches on disk; BENCHMARKS.md, "The final stage, thirty-third session"). ``ditlab ablate``
judges by a unit's set-up whether it fits what a machine has left, so it has to tell the two apart before it
trains. A training records which it was (Trainer: ``compile_cache`` in summary.json), and the study's rates keep
the two set-ups apart (ditlab.experiments.timings.measured_rates).

The marker lives inside inductor's cache folder, so it goes when the cache goes (a fresh machine, a cleared temp
folder), and a wrong answer costs only an estimate: nothing here changes what is compiled or how.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch

from ditlab.configlib import to_dict

# Settings that reach no compiled graph: the same network with another of these compiles from the cache. Anything
# else counts as another network (an overcautious estimate at worst: the set-up of a new network).
# (data.path: where the images lie, not their size; train.eval_ref: what FID during training compares with;
# train.device: "auto" in the study file, "cuda:K" in the worker of `ditlab ablate --gpus N` that trains it, one
# kind of device on a machine either way.)
_NOT_COMPILED = {"train": ("seed", "run_dir", "time_limit", "steps", "log_every", "sample_every", "ckpt_every",
                           "eval_ref", "eval_at_end", "eval_patience", "device"),
                 "data": ("path",),
                 # the optimizer and the EMA step outside the compiled loss (but for Muon's own compiled update,
                 # network_key's "muon_compile"): on an H100, Muon's `whole` set up in 3.6 s after `baseline` (the
                 # same network under AdamW), and a unit at another lr after its network's first in 4 s (BENCHMARKS.md)
                 "optim": None, "ema": None,
                 "sample": None}  # None: the whole section (sampling compiles its own network, after training)

_MARKERS = "ditlab_compiled_networks"


def network_key(cfg) -> str:
    """A short hash of what a training compiles: the config without the settings in _NOT_COMPILED, and torch's
    version (whose caches are per version)."""
    d = to_dict(cfg)
    muon_compile = cfg.optim.muon_compile if cfg.optim.name == "muon" else "off"  # its update compiles per shape
    for section, keys in _NOT_COMPILED.items():
        if keys is None:
            d.pop(section, None)
        else:
            for k in keys:
                d.get(section, {}).pop(k, None)
    text = json.dumps({"config": d, "muon_compile": muon_compile, "torch": torch.__version__}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def inductor_cache_folder() -> Path:
    """Where torch.compile (inductor) keeps its on-disk cache: $TORCHINDUCTOR_CACHE_DIR, else torch's default (a
    folder per user in the temp folder)."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    try:  # torch's own answer, where this torch has it (a private module: the fallback mirrors it)
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        return Path(default_cache_dir())
    except Exception:  # noqa: BLE001 - any failure of a private API falls back to the documented default
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown_user"
        return Path(tempfile.gettempdir()) / ("torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))


def compiled_before(key: str) -> bool:
    """Whether a training of the network ``key`` (network_key) finished on this machine since its compile cache
    was made."""
    return (inductor_cache_folder() / _MARKERS / key).is_file()


def mark_compiled(key: str) -> None:
    """Record that the network ``key`` has been compiled here. Failing to write it only costs the next estimate,
    so an unwritable folder is passed over."""
    try:
        folder = inductor_cache_folder() / _MARKERS
        folder.mkdir(parents=True, exist_ok=True)
        (folder / key).touch()
    except OSError:
        pass


def cache_state(cfg) -> str:
    """What a training of ``cfg`` should find: "off" (train.compile is off), "warm" (compiled here before) or
    "cold"."""
    if not cfg.train.compile:
        return "off"
    return "warm" if compiled_before(network_key(cfg)) else "cold"

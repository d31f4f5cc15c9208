"""The metadata every samples ``.npz`` of ``ditlab sample`` carries, for the commands that read one.

``ditlab_meta`` is a JSON string: task kind, run, checkpoint, sampler settings, seed, the data set
and factor of conditional samples. ``ditlab fid``, ``psnr`` and the task evaluations check it, so a
file of another task kind is refused by name instead of scored as if it were images.
"""
from __future__ import annotations

import json

import numpy as np

META_KEY = "ditlab_meta"
IMAGE_KINDS = ("image", "superres", "lift")  # kinds whose samples files hold images (arr_0)


def read_meta(path) -> dict:
    """The ``ditlab_meta`` of a samples file ({} for files that ditlab did not write)."""
    with np.load(path, allow_pickle=False) as z:
        if META_KEY not in z.files:
            return {}
        return json.loads(str(z[META_KEY]))


def require_images(path) -> dict:
    """The metadata of a samples file that must hold images; ValueError naming the file otherwise."""
    meta = read_meta(path)
    kind = meta.get("task")
    if kind is not None and kind not in IMAGE_KINDS:
        raise ValueError(f"{path} holds samples of a task.kind={kind} run, not images "
                         f"(score those with `ditlab {kind} eval`)")
    return meta

"""The in-context regression network: x, clean-y and noised-y token streams (ditlab.tasks.icl.layout)."""
from __future__ import annotations

from ditlab.models.dit import DiT, build_dit
from ditlab.tasks.icl.layout import icl_streams


def build_icl_model(model_cfg, d: int, n_points: int) -> DiT:
    return build_dit(model_cfg, icl_streams(d, n_points))

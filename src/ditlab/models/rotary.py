"""Rotary position embedding: the rotation of q and k (the tables: ditlab.models.embed.rope_2d / streams.stream_rope).

Each pair (x[2i], x[2i+1]) of the head dimension is rotated by its angle, in fp32.

Its cost: on an H100 a compiled DiT-S/2 training step with RoPE spends ~6.4 ms more on the GPU than with sin-cos
positions, nearly all in one kernel Inductor fuses from the qk RMSNorm's and the rotation's backward (BENCHMARKS.md,
"RoPE's cost in a training step"). Two other ways of writing the rotation (x * cos + swap(x) * sin, and a
hand-written backward as the rotation by the opposite angle) were measured in the whole step and changed nothing
(47.21 and 47.33 GPU ms a step on one H100 against 47.33 for this one): the fusion, not the formula, is the cost.
They stay in scripts/bench_rope.py, which times the rotation alone.
"""
from __future__ import annotations

import torch


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of the head dimension by the tables' angles. x: (B, H, N, hd); cos, sin:
    (N, hd/2). Computed in fp32, returned in x's dtype."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, N, hd/2) each
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)

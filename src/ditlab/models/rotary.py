"""Rotary position embedding: the rotation of q and k (the tables: ditlab.models.embed.rope_2d / streams.stream_rope).

Each pair (x[2i], x[2i+1]) of the head dimension is rotated by its angle. The same rotation can be written in
several ways that give the same numbers (rounding aside) but that torch.compile lowers differently, and the
difference is not small: on an H100, a compiled DiT-S/2 training step with RoPE spent 6.4 ms more on the GPU
than with sin-cos positions, nearly all of it in the kernel Inductor fused from the qk RMSNorm's and the
rotation's backward (BENCHMARKS.md, "RoPE's cost in a training step"). The forms, for measuring which one is
cheapest (scripts/bench_rope.py, scripts/profile_train.py with ``DITLAB_ROPE_FORM``):

- ``pairs`` (the default): unbind the pairs, rotate in fp32, stack them again; autograd differentiates that.
- ``pairs_swapped``: x * cos + swap(x) * sin with (N, hd) tables, swap exchanging each pair's two elements.
- ``transposed_backward``: ``pairs`` forward, and a backward written as the rotation of the gradient by the
  opposite angle (a rotation's transpose) instead of autograd's backward of unbind and stack.

``DITLAB_ROPE_FORM`` (read at import) picks the form for measurement only; the default stays until a GPU
measurement says otherwise.
"""
from __future__ import annotations

import os

import torch


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of the head dimension. x: (B, H, N, hd); cos, sin: (N, hd/2)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, N, hd/2) each
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


def rotate_pairs_swapped(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The same rotation as x * cos + swap(x) * sin over the whole head dimension: no unbind or stack, so
    its backward is the same elementwise form."""
    cos2 = cos.repeat_interleave(2, dim=-1)  # (N, hd): each pair's angle twice
    sin2 = torch.stack((-sin, sin), dim=-1).flatten(-2)  # (N, hd): -sin for a pair's first element, +sin its second
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x[2i+1], x[2i])
    return (xf * cos2 + swapped * sin2).type_as(x)


class _RotateTransposedBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return rotate_pairs(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return rotate_pairs(grad, cos, -sin), None, None  # the tables are buffers: no gradient


def rotate_pairs_transposed_backward(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``rotate_pairs`` with its backward written as the rotation by the opposite angle."""
    return _RotateTransposedBackward.apply(x, cos, sin)


FORMS = {"pairs": rotate_pairs, "pairs_swapped": rotate_pairs_swapped,
         "transposed_backward": rotate_pairs_transposed_backward}

ROPE_FORM = os.environ.get("DITLAB_ROPE_FORM", "pairs")
if ROPE_FORM not in FORMS:
    raise ValueError(f"DITLAB_ROPE_FORM={ROPE_FORM!r}: choose one of {', '.join(FORMS)} (a measurement knob; unset "
                     "for the default)")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of the head dimension by the tables' angles, in the form ``ROPE_FORM``.
    x: (B, H, N, hd); cos, sin: (N, hd/2)."""
    return FORMS[ROPE_FORM](x, cos, sin)

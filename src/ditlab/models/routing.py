"""Token routing in training (TREAD: Krause et al. 2025, "Token Routing for Efficient Architecture-agnostic
Diffusion Training"): ``model.route_fraction`` of the tokens, drawn at random per sample and step, skip the blocks
``model.route_blocks`` = "A:B" (blocks A .. B-1): they leave the sequence before block A and come back, unchanged,
after block B-1. The other tokens run those blocks at a fraction of the cost. The loss covers every token; in
eval mode (sampling, evaluation) every token runs every block.

While routed, the kept tokens take their own rows of everything per-token: positions (rotary tables), the key
padding / attention mask, and the adaLN conditioning. Per-stream or per-class-token conditioning groups become
per-token rows for those blocks. Context sets (cross-attention) are untouched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ditlab.models.token_groups import Index, gather_groups


@dataclass(frozen=True)
class RouteSpec:
    fraction: float  # of the tokens that skip blocks [start, end)
    start: int
    end: int


def parse_route(fraction: float, blocks: str, depth: int) -> Optional[RouteSpec]:
    """model.route_fraction / model.route_blocks as a RouteSpec (None: off), or an error naming the key."""
    blocks = str(blocks or "").strip()
    if not fraction and not blocks:
        return None
    if not blocks:
        raise ValueError(f"model.route_fraction={fraction} needs model.route_blocks, the blocks the routed tokens "
                         f"skip, e.g. 2:{depth - 2}")
    if not 0 < fraction < 1:
        raise ValueError(f"model.route_fraction must lie in (0, 1) with model.route_blocks={blocks!r} (0 with no "
                         f"route_blocks: off), got {fraction}")
    try:
        start, end = (int(v) for v in blocks.split(":"))
    except ValueError:
        raise ValueError(f"model.route_blocks must be 'A:B' (the blocks A .. B-1), got {blocks!r}") from None
    if not 0 <= start < end <= depth:
        raise ValueError(f"model.route_blocks={blocks!r}: needs 0 <= A < B <= depth ({depth})")
    return RouteSpec(float(fraction), start, end)


@dataclass
class Routed:
    """The state of one routed span: what forward restores after its last block."""

    keep: torch.Tensor  # (B, n) the kept tokens' positions, ascending
    full: torch.Tensor  # (B, N, D) the sequence as it entered the span
    c: torch.Tensor
    index: Index
    mask: Optional[torch.Tensor]
    rope: Optional[tuple[torch.Tensor, torch.Tensor]]


def kept_count(num_tokens: int, fraction: float) -> int:
    return max(1, num_tokens - round(fraction * num_tokens))


def route(spec: RouteSpec, h: torch.Tensor, c: torch.Tensor, index: Index, mask: Optional[torch.Tensor],
          rope: Optional[tuple[torch.Tensor, torch.Tensor]]):
    """(h, c, index, mask, rope) of the kept tokens, and the Routed state to :func:`unroute` with."""
    B, N, D = h.shape
    n = kept_count(N, spec.fraction)
    keep = torch.rand(B, N, device=h.device).argsort(dim=1)[:, :n].sort(dim=1).values  # (B, n)
    state = Routed(keep, h, c, index, mask, rope)
    h_kept = h.gather(1, keep[..., None].expand(B, n, D))
    if index is None and c.shape[1] == 1:
        c_kept = c  # one conditioning row per sample: it covers any subset
    else:  # per stream / per class token / per token: every kept token's own row
        rows = gather_groups(c, index).expand(B, N, c.shape[-1])
        c_kept = rows.gather(1, keep[..., None].expand(B, n, c.shape[-1]))
    if mask is not None:
        if mask.dim() == 2:  # (B, N) key padding
            mask = mask.gather(1, keep)
        else:  # (B, N, N): the kept rows, then the kept columns
            mask = mask.gather(1, keep[..., None].expand(B, n, N)).gather(2, keep[:, None, :].expand(B, n, n))
    if rope is not None:  # (N, hd/2) tables -> (B, 1, n, hd/2): each sample's kept positions, over the heads
        rope = tuple(t[keep][:, None] for t in rope)
    return h_kept, c_kept, None, mask, rope, state


def unroute(state: Routed, h: torch.Tensor):
    """The full sequence again: the kept tokens' outputs in their places, the routed ones as they entered; and the
    (c, index, mask, rope) of the full sequence."""
    B, n, D = h.shape
    full = state.full.to(h.dtype).scatter(1, state.keep[..., None].expand(B, n, D), h)
    return full, state.c, state.index, state.mask, state.rope

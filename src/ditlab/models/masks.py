"""The boolean mask conventions of a DiT's inputs, shared by the network and its context sets.

Every mask is boolean, True = keep (a real token, a key that may be attended to). ``bool_mask`` turns a
user's padding mask into that form (or refuses it); ``combine_masks`` builds the full self-attention mask
from an ``attn_mask`` and the key padding. Separate so that ditlab.models.dit, ditlab.models.context_sets
and the networks built around a DiT (ditlab.models.point_set) apply one rule, without importing each other.
"""
from __future__ import annotations

from typing import Optional

import torch


def bool_mask(m: Optional[torch.Tensor], what: str) -> Optional[torch.Tensor]:
    """A padding mask as bool. A float or integer mask holding only 0 and 1 (1 = real, 0 = padding)
    is converted; any other value (an additive finfo.min mask, 0.5, NaN) is a ValueError naming the
    mask. Bool masks pass unchecked: the value check's host sync is paid by non-bool masks only."""
    if m is None or m.dtype == torch.bool:
        return m
    if m.dtype.is_complex:
        raise TypeError(f"{what} must be boolean (True = real) or hold 0 / 1, got dtype {m.dtype}")
    ok = (m == 0) | (m == 1)
    if not bool(ok.all()):  # a host sync, for a non-bool (user-input) mask only
        raise ValueError(f"{what} must be boolean (True = real) or hold only 0 and 1 (1 = real, 0 = "
                         f"padding), but it holds {m[~ok].flatten()[0].item()!r} (dtype {m.dtype})")
    return m != 0


def combine_masks(key_padding: Optional[torch.Tensor], attn_mask: torch.Tensor, batch: int,
                  num_tokens: int) -> torch.Tensor:
    """A full self-attention mask (B, N, N), True = may attend: ``attn_mask`` (N, N) or (B, N, N)
    restricted to the real keys of ``key_padding`` (B, N), e.g. prefixes of an in-context prompt."""
    if attn_mask.dtype != torch.bool:
        raise TypeError(f"attn_mask must be boolean (True = may attend), got dtype {attn_mask.dtype}")
    if tuple(attn_mask.shape) not in ((num_tokens, num_tokens), (batch, num_tokens, num_tokens)):
        raise ValueError(f"attn_mask has shape {tuple(attn_mask.shape)}, expected ({num_tokens}, {num_tokens}) "
                         f"or ({batch}, {num_tokens}, {num_tokens})")
    mask = attn_mask.expand(batch, num_tokens, num_tokens)
    return mask if key_padding is None else mask & key_padding[:, None, :]


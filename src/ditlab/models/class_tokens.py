"""In-context class tokens (``model.class_tokens``): the label also enters the self-attention sequence.

With N > 0 the class embedding (LabelEmbedder's row for the label, or its learned null row when the
label is dropped, so classifier-free guidance works unchanged) plus N learned position offsets become N
tokens placed before every stream's tokens. They pass through the blocks like any token and are cut off
before the output layers: they carry no loss and belong to no stream.

Their adaLN conditioning is the embedding of noise level 0 (a clean token, like a clean condition
stream) in a conditioning group of their own; ``model.label_in_adaln=false`` then leaves the label out
of adaLN altogether, so it reaches the network through these tokens only.

Attention masks. The tokens are always real keys (never padding). Without an ``attn_mask`` they attend
to every real token; with one, they attend to each other only, so that they cannot relay information
between tokens the mask keeps apart (a causal prompt stays causal), while every token may attend to
them.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class ClassTokens(nn.Module):
    def __init__(self, num: int, dim: int):
        super().__init__()
        self.num = num
        self.pos = nn.Parameter(torch.zeros(num, dim))  # learned offsets: the N tokens differ

    def reset_parameters(self) -> None:
        nn.init.normal_(self.pos, std=0.02)  # the scale of the label table's rows

    def forward(self, label_embedding: torch.Tensor) -> torch.Tensor:
        """(B, D) class embedding -> (B, N, D) tokens."""
        return label_embedding[:, None] + self.pos.to(label_embedding.dtype)


def with_class_keys(key_padding: Optional[torch.Tensor], num: int) -> Optional[torch.Tensor]:
    """(B, T) key padding -> (B, num + T): the class tokens are real."""
    if key_padding is None:
        return None
    ones = torch.ones(key_padding.shape[0], num, dtype=torch.bool, device=key_padding.device)
    return torch.cat([ones, key_padding], dim=1)


def with_class_rows(mask: torch.Tensor, num: int) -> torch.Tensor:
    """(B, T, T) attention mask -> (B, num + T, num + T): class queries see the class keys only; every
    query sees the class keys (see the module docstring)."""
    B, T, _ = mask.shape
    k = num
    top = torch.cat([mask.new_ones(B, k, k), mask.new_zeros(B, k, T)], dim=2)
    bottom = torch.cat([mask.new_ones(B, T, k), mask], dim=2)
    return torch.cat([top, bottom], dim=1)

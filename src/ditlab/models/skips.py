"""U-ViT long skip connections (Bao et al. 2023, "All are Worth Words"), ``model.long_skips``.

The outputs of the first ``depth // 2`` blocks are kept; before each of the mirrored last ``depth // 2``
blocks the hidden state h is concatenated with the kept output of its mirror (block ``depth - 1 - i``)
and projected back to D: ``h <- [h, skip] W^T + b`` with W of shape (D, 2D). With an odd depth the
middle block has no skip.

Initialisation. U-ViT initialises this projection like any other Linear (truncated normal, std 0.02),
so its network at initialisation is not the plain transformer: h is replaced by a small random mix of h
and the skip. Here W starts as [I, 0] and b as 0, so at initialisation every projection returns h
unchanged and the network computes exactly what it computes without skips (the skip half of W gets
gradients from the first step, since the skip input is not zero). It also draws no random numbers, so
a model with skips has the same initial weights as one without. This keeps DiT's adaLN-Zero property
(every block starts as the identity) and makes a with/without ablation start from the same function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SkipProjection(nn.Module):
    """Linear(2D -> D) on [h, skip]. Its own parameters rather than an nn.Linear so that DiT's blanket
    xavier initialisation of Linear layers passes it by (it starts as [I, 0], see the module docstring)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, 2 * dim))
        self.bias = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        dim = self.bias.shape[0]
        with torch.no_grad():
            self.weight.zero_()
            self.weight[:, :dim].copy_(torch.eye(dim))
            self.bias.zero_()

    def forward(self, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.cat([h, skip], dim=-1), self.weight, self.bias)


class LongSkips(nn.Module):
    """The ``depth // 2`` skip projections of a depth-``depth`` network; ``proj[k]`` feeds block
    ``depth - depth // 2 + k`` from block ``depth // 2 - 1 - k``.

    Use in a block loop: ``h = skips.merge(i, h, kept)`` before block i, ``skips.keep(i, h, kept)`` after
    it, with ``kept`` a list that starts empty. Both branch on the block number only (a Python int), so
    torch.compile sees no data-dependent control flow."""

    def __init__(self, depth: int, dim: int):
        super().__init__()
        self.depth, self.num = depth, depth // 2
        self.proj = nn.ModuleList(SkipProjection(dim) for _ in range(self.num))

    def source(self, i: int) -> int | None:
        """The block whose output block i receives, or None."""
        k = i - (self.depth - self.num)
        return None if k < 0 else self.num - 1 - k

    def merge(self, i: int, h: torch.Tensor, kept: list[torch.Tensor]) -> torch.Tensor:
        src = self.source(i)
        if src is None:
            return h
        return self.proj[i - (self.depth - self.num)](h, kept[src])

    def keep(self, i: int, h: torch.Tensor, kept: list[torch.Tensor]) -> None:
        if i < self.num:
            kept.append(h)

    def reset_parameters(self) -> None:
        for p in self.proj:
            p.reset_parameters()

"""The affine-free normalisation before each adaLN modulation (``model.norm``).

adaLN supplies the scale and shift, so the norm itself has no parameters: DiT's LayerNorm (centre, then
divide by the standard deviation) or RMSNorm (divide by the root mean square, no centring; Zhang &
Sennrich 2019), which skips the mean and is slightly cheaper. Neither holds state-dict entries, so
switching changes no parameter names.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORM_KINDS = ("layernorm", "rmsnorm")
EPS = 1e-6


class RMSNorm(nn.Module):
    """Affine-free RMSNorm over the last dimension (eps 1e-6, as DiT's LayerNorm)."""

    def __init__(self, dim: int, eps: float = EPS):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.dim,), None, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, elementwise_affine=False, eps=EPS)
    if kind == "rmsnorm":
        return RMSNorm(dim)
    raise ValueError(f"model.norm must be one of {', '.join(NORM_KINDS)}, got {kind!r}")

"""Pure-PyTorch reference of the fused adaLN kernels: the exact eager mathematics of DiTBlock.

Used wherever the Triton kernels cannot run (the CPU, no Triton), and by the tests as the reference.

Modulation tensors (shift, scale, gate) have shape (B, G, D): G conditioning groups per sample. A token
n of x (B, N, D) uses group ``index[n]`` when an index is given, otherwise group 0 when G == 1
(per-sample modulation, broadcast) or group n when G == N (per-token modulation). The index may be a
ditlab.models.token_groups.TokenGroups (the index with its runs of consecutive tokens): the reference path then
spreads the modulation without an indexed gather.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ditlab.models.token_groups import Index, gather_groups

EPS = 1e-6


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def adaln_modulate_ref(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                       index: Index = None) -> torch.Tensor:
    """LayerNorm(x) (no affine, eps 1e-6) * (1 + scale) + shift."""
    h = F.layer_norm(x, (x.shape[-1],), eps=EPS)
    return modulate(h, gather_groups(shift, index), gather_groups(scale, index))


def gate_residual_adaln_ref(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor, shift: torch.Tensor,
                            scale: torch.Tensor, index: Index = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """x' = x + gate * branch, and the next sub-layer's input LayerNorm(x') * (1 + scale) + shift."""
    x = x + gather_groups(gate, index) * branch
    return x, adaln_modulate_ref(x, shift, scale, index)

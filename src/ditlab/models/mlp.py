"""The feed-forward sub-layer of a DiT block: DiT's GELU MLP or a SwiGLU MLP (``model.mlp``).

SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"): ``W_out(silu(x W_gate) * (x W_value))``.
It has three weight matrices where the GELU MLP has two, so its hidden width is cut to 2/3 of the GELU
MLP's (``swiglu_hidden``) to keep the parameter count and FLOPs about the same: with biases, GELU has
8 D^2 + 5 D parameters at mlp_ratio 4, SwiGLU 3 D H + 2 H + D, which is 8 D^2 + 19/3 D at H = 8 D / 3.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ditlab.models.stacked import stacked_linear

MLP_KINDS = ("gelu", "swiglu")
SWIGLU_MULTIPLE = 8  # hidden widths that are multiples of 8 keep bf16 GEMMs on tensor-core friendly shapes


def swiglu_hidden(dim: int, mlp_ratio: float, multiple: int = SWIGLU_MULTIPLE) -> int:
    """2/3 of the GELU MLP's hidden width ``mlp_ratio * dim``, rounded to the nearest multiple of ``multiple``
    (at least one multiple). DiT-S/B/XL at ratio 4: 1024, 2048, 3072, i.e. exactly 8 D / 3."""
    return max(multiple, multiple * round(2 / 3 * mlp_ratio * dim / multiple))


class Mlp(nn.Module):
    """DiT's MLP: Linear -> GELU (tanh approximation) -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """SwiGLU MLP of hidden width ``hidden``. The gate and value projections are one Linear (D -> 2H, gate
    rows first) so that the input is read once by one GEMM; ``reset_xavier`` initialises the two halves as
    two D -> H layers, as separate layers would be."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.gate_value = stacked_linear(dim, hidden, 2)
        self.out = nn.Linear(hidden, dim)

    def reset_xavier(self) -> None:
        for half in self.gate_value.weight.data.chunk(2, dim=0):
            nn.init.xavier_uniform_(half)
        nn.init.zeros_(self.gate_value.bias)
        nn.init.xavier_uniform_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.gate_value(x).chunk(2, dim=-1)
        return self.out(F.silu(gate) * value)


def make_mlp(kind: str, dim: int, mlp_ratio: float) -> nn.Module:
    """The MLP of ``model.mlp``; gelu is DiT's (hidden ``int(dim * mlp_ratio)``, as before this option)."""
    if kind == "gelu":
        return Mlp(dim, int(dim * mlp_ratio))
    if kind == "swiglu":
        return SwiGLU(dim, swiglu_hidden(dim, mlp_ratio))
    raise ValueError(f"model.mlp must be one of {', '.join(MLP_KINDS)}, got {kind!r}")


def reset_swiglu(module: nn.Module) -> None:
    """Re-initialise every SwiGLU inside ``module`` (after a blanket xavier pass over its Linears)."""
    for m in module.modules():
        if isinstance(m, SwiGLU):
            m.reset_xavier()

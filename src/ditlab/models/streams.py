"""Token streams: what a DiT's sequence is made of, and the size table that names a network.

A sample is a set of *streams* (a target image, a low-resolution condition, a point cloud, the x / y
values of a regression prompt...). Each stream has its own embedding, its own positions and its own
noise level; ditlab.models.dit concatenates their tokens into one sequence. This module holds
everything that depends on one stream alone: its spec, its embedding (token streams; image streams use
ditlab.models.embed.PatchEmbed), its position tables, and the inverse of patching. It is separate
from the network so that task code (layouts, data) can describe streams without the transformer.
The size table (``DiT-{S,B,L,XL}/{2,4,8}``) lives here because ``model.arch`` names the patch size too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ditlab.models.embed import rope_2d, sincos_2d, sinusoidal

# name -> (hidden size, depth, heads), as in the DiT paper's table.
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}
PATCH_SIZES = (2, 4, 8)
DIT_ARCHS = [f"DiT-{s}/{p}" for s in DIT_SIZES for p in PATCH_SIZES]


def parse_arch(arch: str) -> tuple[int, int, int, int]:
    """'DiT-B/2' -> (hidden, depth, heads, patch)."""
    try:
        size, patch = arch.removeprefix("DiT-").split("/")
        hidden, depth, heads = DIT_SIZES[size]
        patch = int(patch)
    except (ValueError, KeyError):
        raise ValueError(f"unknown model.arch {arch!r}; choose one of {', '.join(DIT_ARCHS)}") from None
    if patch not in PATCH_SIZES:
        raise ValueError(f"unknown patch size in model.arch {arch!r}; choose one of {PATCH_SIZES}")
    return hidden, depth, heads, patch


@dataclass(frozen=True)
class StreamSpec:
    """One stream of the token sequence: an image cut into patches, or a set / sequence of tokens.

    kind="image": ``size`` x ``size`` pixels with ``channels`` channels, patches of ``patch_size``,
    2-D positions. kind="tokens": ``size`` tokens of ``channels`` features each (a point cloud, the
    x / y values of a regression prompt), embedded by a linear layer; ``positions`` "none" keeps the
    stream a set (permutation-equivariant), "index" adds a 1-D sin-cos position of the token index.
    """

    name: str
    channels: int
    size: int
    patch_size: int = 1
    predict: bool = True  # the model outputs a prediction for this stream (False for conditions)
    pos_scale: float = 1.0  # coordinate stretch, to place a coarse grid on a fine stream's frame
    kind: str = "image"
    positions: str = "grid"  # image: "grid"; tokens: "none" or "index"

    def __post_init__(self):
        if self.kind not in ("image", "tokens"):
            raise ValueError(f"stream {self.name!r}: kind must be 'image' or 'tokens', got {self.kind!r}")
        if self.kind == "tokens" and self.positions not in ("none", "index"):
            raise ValueError(f"token stream {self.name!r}: positions must be 'none' or 'index'")

    @property
    def grid(self) -> int:
        return self.size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2 if self.kind == "image" else self.size

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample tensor shape of the stream."""
        return (self.channels, self.size, self.size) if self.kind == "image" else (self.size, self.channels)


class TokenEmbed(nn.Module):
    """(B, N, C) token features -> (B, N, D)."""

    def __init__(self, channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(channels, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def stream_positions(s: StreamSpec, dim: int) -> torch.Tensor:
    """Additive sin-cos positions (N_s, dim) of a stream (zeros for a set)."""
    if s.kind == "image":
        return sincos_2d(s.grid, s.grid, dim, s.pos_scale)
    if s.positions == "index":
        return sinusoidal(torch.arange(s.size).float() * s.pos_scale, dim)
    return torch.zeros(s.size, dim)


def stream_rope(s: StreamSpec, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables of a stream; token streams are not rotated (angle 0)."""
    if s.kind == "image":
        return rope_2d(s.grid, s.grid, head_dim, scale=s.pos_scale)
    return torch.ones(s.size, head_dim // 2), torch.zeros(s.size, head_dim // 2)


def unpatchify(tokens: torch.Tensor, spec: StreamSpec) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W); token streams stay (B, N, C)."""
    if spec.kind == "tokens":
        return tokens
    B, g, p, C = tokens.shape[0], spec.grid, spec.patch_size, spec.channels
    x = tokens.reshape(B, g, g, p, p, C)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(B, C, g * p, g * p)


"""Embedders: noise level, class label (with a learned null for CFG), patches, positions."""
from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of a real-valued tensor of any shape -> (..., dim), in fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Noise level t in [0, 1] (0 = clean) -> (…, D). Works per sample (B,) or per token (B, N).

    t is scaled by 1000 before the sinusoids so that the frequencies match the usual DDPM
    integer-step embedding; the same module serves DDPM (t = k / T) and flow matching.
    """

    def __init__(self, hidden_size: int, freq_dim: int = 256, scale: float = 1000.0):
        super().__init__()
        self.freq_dim = freq_dim
        self.scale = scale
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal(t * self.scale, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label -> (B, D), with one extra learned row used as the null label (index num_classes).

    Dropped labels are chosen with torch.where, so every parameter is used in every step and DDP
    needs no find_unused_parameters.
    """

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, hidden_size)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """labels: (B,) int64 in [0, num_classes]; drop: optional (B,) bool -> use the null label."""
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        return self.table(labels)


class PatchEmbed(nn.Module):
    """(B, C, H, W) image -> (B, H/p * W/p, D) tokens in row-major order."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        if x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the patch size {p}")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


def grid_coords(height: int, width: int) -> torch.Tensor:
    """(H*W, 2) float (row, col) coordinates in row-major token order."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1).float()


def sincos_2d(height: int, width: int, dim: int, scale: float = 1.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, (H*W, dim): half the channels for rows, half for cols.

    ``scale`` stretches the coordinates so that a coarser grid (e.g. a 32x32 condition beside a
    64x64 target) can be placed on the same spatial frame (scale = 2).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a hidden size divisible by 4, got {dim}")
    coords = grid_coords(height, width) * scale
    return torch.cat([sinusoidal(coords[:, 0], dim // 2), sinusoidal(coords[:, 1], dim // 2)], dim=-1)


def rope_2d(height: int, width: int, head_dim: int, theta: float = 100.0, scale: float = 1.0):
    """Axial 2-D rotary tables (cos, sin), each (H*W, head_dim/2): half the pairs rotate with the row,
    half with the column. theta=100 suits grids of tens of tokens per side."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # (hd/4,)
    coords = grid_coords(height, width) * scale  # (N, 2)
    angles = torch.cat([coords[:, :1] * freqs, coords[:, 1:] * freqs], dim=-1)  # (N, hd/2)
    return torch.cos(angles), torch.sin(angles)

"""Point-set embeddings and the scene network: a DiT over generated points that cross-attends to a
point cloud.

Why not feed raw coordinates to the DiT's linear token embedding and cross-attention keys?
- A key linear in xyz makes the attention logit q . (W p) a linear function of position, so a
  query can only favour points far along one direction; it cannot pick the points *near* it.
- LayerNorm of a linear embedding of three numbers is (nearly) scale-invariant, so |p| is lost.
Sin/cos features of the coordinates at octave frequencies, followed by a small MLP, give
embeddings in which nearby points are similar and far ones are not (a NeRF-style encoding).

Both embeddings act on each point alone, and the cross-attention mask keeps padded points of a
context set away from real ones. Their values are still zeroed before the embedding: a NaN or inf
there would otherwise reach every output (0 attention weight * NaN value) and the weight gradients.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ditlab.models.dit import DiT


def fourier_features(xyz: torch.Tensor, bands: int) -> torch.Tensor:
    """(..., 3) -> (..., 3 + 6 * bands): xyz, then sin and cos of pi * 2^k * xyz for k < bands."""
    freqs = math.pi * 2.0 ** torch.arange(bands, device=xyz.device, dtype=xyz.dtype)  # (bands,)
    angles = (xyz[..., None] * freqs).flatten(-2)  # (..., 3 * bands)
    return torch.cat([xyz, angles.sin(), angles.cos()], dim=-1)


class PointEmbed(nn.Module):
    """Per point: (..., 3 + E) coordinates plus E extra features -> (..., dim).

    The first three channels are coordinates (Fourier-encoded); the rest (e.g. the target flag)
    are passed to the MLP as they are.
    """

    def __init__(self, in_channels: int, dim: int, bands: int):
        super().__init__()
        if in_channels < 3:
            raise ValueError(f"a point embedding needs at least the 3 coordinates, got {in_channels} channels")
        self.bands = bands
        self.mlp = nn.Sequential(nn.Linear(in_channels + 6 * bands, dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(dim, dim))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([fourier_features(points[..., :3], self.bands), points[..., 3:]], dim=-1)
        return self.mlp(feats)


class SceneDiT(nn.Module):
    """A DiT with one predicted point-set stream, cross-attending to an embedded point cloud.

    ``dit`` must have been built with ``context_dim`` equal to the embedding width; its token
    embedding of ``stream`` is replaced by a :class:`PointEmbed`, so noisy points are embedded
    like scene points. ``streams`` is exposed so task code can read the stream specs as for a DiT.
    """

    def __init__(self, dit: DiT, stream: str, context_channels: int, bands: int):
        super().__init__()
        if dit.context_dim is None:
            raise ValueError("SceneDiT needs a DiT built with context_dim (cross-attention)")
        spec = {s.name: s for s in dit.streams}.get(stream)
        if spec is None or spec.kind != "tokens":
            raise ValueError(f"SceneDiT needs a token stream named {stream!r}; the DiT has {[s.name for s in dit.streams]}")
        self.dit = dit
        self.stream = stream
        self.context_embed = PointEmbed(context_channels, dit.context_dim, bands)
        self.dit.patch_embed[stream] = PointEmbed(spec.channels, dit.hidden_size, bands)

    @property
    def streams(self):
        return self.dit.streams

    def forward(
        self,
        x: dict[str, torch.Tensor],  # stream -> (B, K, C) noisy points
        t: dict[str, torch.Tensor],  # stream -> (B,) noise level
        context: torch.Tensor,  # (B, P, F) scene points: xyz + extra features (e.g. the target flag)
        context_mask: Optional[torch.Tensor] = None,  # (B, P) bool (or 0/1), True = real point
        context_drop: Optional[torch.Tensor] = None,  # (B,) bool: use the learned null context
    ) -> dict[str, torch.Tensor]:
        if context_mask is not None:
            context_mask = DiT._bool_mask(context_mask, "context_mask")  # 0 / 1 floats -> bool, others refused
            if context.dim() != 3 or tuple(context_mask.shape) != tuple(context.shape[:2]):
                raise ValueError(f"context_mask has shape {tuple(context_mask.shape)}, expected "
                                 f"{tuple(context.shape[:2])} (context has shape {tuple(context.shape)})")
            context = torch.where(context_mask[..., None], context, 0)  # padding: zero before the embedding
        ctx = self.context_embed(context)  # (B, P, Dc)
        return self.dit(x, t, context=ctx, context_mask=context_mask, context_drop=context_drop)

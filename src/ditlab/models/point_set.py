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
from ditlab.models.masks import bool_mask


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


class DescriptionEmbed(nn.Module):
    """A short token sequence describing an object -> (B, L, dim) context tokens.

    Input (B, L, 2) rows of (slot, value): token 0 is (kind id, 0), embedded by a learned table of
    ``num_kinds`` kinds; token j >= 1 is (j, size parameter j - 1), embedded as a learned slot embedding
    plus an MLP of the value's sin / cos features. Padding tokens are masked by the caller.
    """

    def __init__(self, num_kinds: int, max_tokens: int, dim: int, bands: int = 6):
        super().__init__()
        self.bands = bands
        self.kind = nn.Embedding(num_kinds, dim)
        self.slot = nn.Embedding(max_tokens, dim)
        self.value = nn.Sequential(nn.Linear(1 + 2 * bands, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))

    def forward(self, desc: torch.Tensor) -> torch.Tensor:
        slot = desc[..., 0].long().clamp(0, self.slot.num_embeddings - 1)  # (B, L)
        v = desc[..., 1:2]  # (B, L, 1)
        freqs = math.pi * 2.0 ** torch.arange(self.bands, device=v.device, dtype=v.dtype)
        feats = torch.cat([v, (v * freqs).sin(), (v * freqs).cos()], dim=-1)
        kind = self.kind(slot[:, :1].clamp(max=self.kind.num_embeddings - 1))  # (B, 1, dim): token 0's id is a kind
        rest = self.slot(slot[:, 1:]) + self.value(feats[:, 1:])
        return torch.cat([kind, rest], dim=1)


class SceneDiT(nn.Module):
    """A DiT with one predicted point-set stream, cross-attending to an embedded point cloud.

    ``dit`` must have been built with ``context_dim`` equal to the embedding width; its token
    embedding of ``stream`` is replaced by a :class:`PointEmbed`, so noisy points are embedded
    like scene points. ``streams`` is exposed so task code can read the stream specs as for a DiT.
    """

    def __init__(self, dit: DiT, stream: str, context_channels: int, bands: int,
                 describe: Optional[tuple[str, int, int]] = None):
        """``describe`` = (set name, kinds, tokens): a second, named context set describing the target
        (``DescriptionEmbed``); the DiT must have that named set (ContextSpec) of width ``dit`` hidden."""
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
        self.describe_set = None
        if describe is not None:
            name, kinds, tokens = describe
            if name not in dit.context_specs:
                raise ValueError(f"SceneDiT: the DiT has no named context set {name!r} for the description")
            self.describe_set = name
            self.describe_embed = DescriptionEmbed(kinds, tokens, dit.context_specs[name].dim, bands)

    @property
    def streams(self):
        return self.dit.streams

    def forward(
        self,
        x: dict[str, torch.Tensor],  # stream -> (B, K, C) noisy points
        t: dict[str, torch.Tensor],  # stream -> (B,) noise level
        context: torch.Tensor,  # (B, P, F) scene points: xyz + extra features (e.g. the target flag)
        context_mask: Optional[torch.Tensor] = None,  # (B, P) bool (or 0/1), True = real point
        context_drop: Optional[torch.Tensor | dict] = None,  # (B,) bool: use the learned null context; or
        # per set: {"": scene flags, <describe set>: description flags}
        describe: Optional[torch.Tensor] = None,  # (B, L, 2) target description (DescriptionEmbed)
        describe_mask: Optional[torch.Tensor] = None,  # (B, L) bool, True = real token
    ) -> dict[str, torch.Tensor]:
        if context_mask is not None:
            context_mask = bool_mask(context_mask, "context_mask")  # 0 / 1 floats -> bool, others refused
            if context.dim() != 3 or tuple(context_mask.shape) != tuple(context.shape[:2]):
                raise ValueError(f"context_mask has shape {tuple(context_mask.shape)}, expected "
                                 f"{tuple(context.shape[:2])} (context has shape {tuple(context.shape)})")
            context = torch.where(context_mask[..., None], context, 0)  # padding: zero before the embedding
        ctx = self.context_embed(context)  # (B, P, Dc)
        contexts = None
        if self.describe_set is not None:
            if describe is None:
                raise ValueError("this scene model cross-attends to a target description: pass describe (B, L, 2)")
            if describe_mask is not None:
                describe_mask = bool_mask(describe_mask, "describe_mask")
                describe = torch.where(describe_mask[..., None], describe, 0)
            contexts = {self.describe_set: (self.describe_embed(describe), describe_mask)}
        elif describe is not None:
            raise ValueError("describe given, but this scene model has no description set (scene.describe_target)")
        return self.dit(x, t, context=ctx, context_mask=context_mask, context_drop=context_drop, contexts=contexts)

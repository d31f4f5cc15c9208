"""The transformer's layers: adaLN-Zero modulated blocks and the per-stream output layer.

``DiTBlock`` is self-attention, optional cross-attention to context sets, MLP, each modulated by the
conditioning of its token's group (adaLN-Zero); ``FinalLayer`` maps a predicted stream's tokens back to
patch pixels. Each block also carries the fused-kernel path (ditlab.models.kernels). They are separate
from ditlab.models.dit, which assembles them into a network over streams, so that other networks
(ditlab.models.control.ConditionedDiT) build blocks of their own. Parameter names here are the
checkpoint layout (``blocks.N.*``, ``final.<stream>.*``): renaming one breaks old runs.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from ditlab.models import kernels
from ditlab.models.attention import Attention
from ditlab.models.mlp import make_mlp
from ditlab.models.norms import make_norm
from ditlab.models.stacked import stacked_linear
from ditlab.models.token_groups import gather_groups


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def unsupported_by_fused_kernels(norm: str) -> tuple[str, ...]:
    """The ``model.*`` settings the fused adaLN path (ditlab.models.kernels) cannot compute: its kernels compute
    LayerNorm. Either MLP (GELU or SwiGLU) runs between the kernels as its own module (``kernels.block_mlp``)."""
    return (f"model.norm={norm}",) if norm != "layernorm" else ()


class AdaLNMods(NamedTuple):
    """One DiTBlock's adaLN-Zero modulation, named, in the order of the adaLN layer's output chunks.

    The order is the checkpoint layout (adaLN.weight rows): self-attention, MLP, then cross-attention.
    """

    shift_msa: torch.Tensor
    scale_msa: torch.Tensor
    gate_msa: torch.Tensor
    shift_mlp: torch.Tensor
    scale_mlp: torch.Tensor
    gate_mlp: torch.Tensor
    shift_ca: Optional[torch.Tensor] = None  # cross-attention (blocks with a context set only)
    scale_ca: Optional[torch.Tensor] = None
    gate_ca: Optional[torch.Tensor] = None


class CrossSet(nn.Module):
    """A named context set's cross-attention in one block, with its own adaLN-Zero shift / scale / gate
    (the sets themselves, ContextSpec and their inputs: ditlab.models.context_sets)."""

    def __init__(self, dim: int, heads: int, context_dim: int, dropout: float, qk_norm: bool,
                 norm: str = "layernorm"):
        super().__init__()
        self.norm = make_norm(norm, dim)
        self.attn = Attention(dim, heads, kv_dim=context_dim, dropout=dropout, qk_norm=qk_norm)
        self.adaLN = stacked_linear(dim, dim, 3)

    def forward(self, x, c, index, context, context_mask):
        mod = self.adaLN(c)
        mod = gather_groups(mod, index)
        shift, scale, gate = mod.chunk(3, dim=-1)
        return x + gate * self.attn(modulate(self.norm(x), shift, scale), context=context, mask=context_mask)


class DiTBlock(nn.Module):
    """Self-attention, optional cross-attention to a context set, MLP; each adaLN-Zero modulated.

    ``sets``: named context sets (ContextSpec name -> width) injected into this block, each a
    :class:`CrossSet` after the unnamed set's cross-attention, before the MLP.
    ``mlp``: "gelu" or "swiglu" (ditlab.models.mlp); ``norm``: "layernorm" or "rmsnorm" (ditlab.models.norms)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attn_dropout: float, qk_norm: bool,
                 context_dim: Optional[int] = None, cross_attn_dropout: float = 0.0,
                 sets: Optional[dict[str, tuple[int, float]]] = None, mlp: str = "gelu", norm: str = "layernorm"):
        super().__init__()
        self.mlp_ratio, self.mlp_kind, self.norm_kind = mlp_ratio, mlp, norm  # to build a copy (models.control)
        self.norm1 = make_norm(norm, dim)
        self.attn = Attention(dim, heads, dropout=attn_dropout, qk_norm=qk_norm)
        self.has_cross = context_dim is not None
        if self.has_cross:
            self.norm_cross = make_norm(norm, dim)
            self.cross_attn = Attention(dim, heads, kv_dim=context_dim, dropout=cross_attn_dropout, qk_norm=qk_norm)
        self.norm2 = make_norm(norm, dim)
        self.mlp = make_mlp(mlp, dim, mlp_ratio)
        self.num_mod = 9 if self.has_cross else 6
        self.adaLN = stacked_linear(dim, dim, self.num_mod)
        # Named context sets (name -> (width, cross-attention dropout)); empty: no state-dict keys.
        self.cross_sets = nn.ModuleDict({name: CrossSet(dim, heads, d, p, qk_norm, norm)
                                         for name, (d, p) in (sets or {}).items()})
        # Fused adaLN kernels (ditlab.models.kernels, train.fast_kernels); not part of the state dict.
        self.fast_kernels = False
        # What the fused kernels cannot compute: configure_fast_kernels refuses train.fast_kernels=on for
        # these settings and keeps the eager path on auto.
        self.fused_unsupported = unsupported_by_fused_kernels(norm)

    def forward(self, x, c, index, mask, rope, context, context_mask, kv_prefix=None, return_kv=False, sets=None,
                attn_gate=None):
        # x: (B, N, D); c: (B, G, D) SiLU'd conditioning of G groups; index: token -> group, (N,) or a
        # TokenGroups (the same with its runs: ditlab.models.token_groups), or None.
        # kv_prefix / return_kv: self-attention keys and values of earlier tokens (DiT's prefix caching).
        # sets: named context sets, name -> (context (B, M, Dc), mask (B, M) bool or None).
        # attn_gate: a gated group of keys (see _self_attention).
        if self.fast_kernels and not self.fused_unsupported:
            return self._forward_fused(x, c, index, mask, rope, context, context_mask, kv_prefix, return_kv,
                                       attn_gate, sets)
        mod = self.adaLN(c)  # (B, G, num_mod * D)
        mod = gather_groups(mod, index)  # (B, N or 1, num_mod * D)
        m = AdaLNMods(*mod.chunk(self.num_mod, dim=-1))
        a = self._self_attention(modulate(self.norm1(x), m.shift_msa, m.scale_msa), mask, rope, kv_prefix, return_kv,
                                 attn_gate)
        if return_kv:
            a, kv = a
        x = x + m.gate_msa * a
        if self.has_cross:
            h = modulate(self.norm_cross(x), m.shift_ca, m.scale_ca)
            x = x + m.gate_ca * self.cross_attn(h, context=context, mask=context_mask)
        for name, cross in self.cross_sets.items():  # each set's mask reaches only its own cross-attention
            x = cross(x, c, index, *sets[name])
        x = x + m.gate_mlp * self.mlp(modulate(self.norm2(x), m.shift_mlp, m.scale_mlp))
        return (x, kv) if return_kv else x

    def _self_attention(self, h, mask, rope, kv_prefix, return_kv, attn_gate):
        """Self-attention; with ``attn_gate = (hidden, split, gate)`` a group of keys is seen through a gate.
        ``gate`` (D,): the output is a_hidden + gate * (a - a_hidden), with a over every key and a_hidden
        without the group (``split``, ditlab.models.attention.KeySplit: q, k, v computed once, two SDPA
        passes). gate 0 gives exactly the attention without the group while the gate still gets a gradient
        (a - a_hidden). gate None: the group hidden, one pass with the mask ``hidden``.
        ditlab.models.control's tokens_gated uses it."""
        if attn_gate is None:
            return self.attn(h, mask=mask, rope=rope, kv_prefix=kv_prefix, return_kv=return_kv)
        if kv_prefix is not None or return_kv:
            raise ValueError("a gated key group (attn_gate) does not support prefix caching")
        hidden, split, gate = attn_gate
        if gate is None:
            return self.attn(h, mask=hidden(), rope=rope)
        a_full, a_hidden = self.attn(h, mask=mask, rope=rope, split=split)
        return a_hidden + gate.to(a_hidden.dtype) * (a_full - a_hidden)

    def _forward_fused(self, x, c, index, mask, rope, context, context_mask, kv_prefix, return_kv, attn_gate=None,
                       sets=None):
        """The same mathematics with fused kernels: each gate + residual is fused with the next sub-layer's
        LayerNorm + modulate, and the modulation is gathered to tokens inside the kernels (no (B, N, 9D)
        tensor). The sub-layers run in the eager order: self-attention, the unnamed set's cross-attention,
        each named set's (CrossSet, its own shift / scale / gate), the MLP."""
        m = AdaLNMods(*self.adaLN(c).chunk(self.num_mod, dim=-1))  # (B, G, D) each
        h = kernels.adaln_modulate(x, m.shift_msa, m.scale_msa, index)
        a = self._self_attention(h, mask, rope, kv_prefix, return_kv, attn_gate)
        if return_kv:
            a, kv = a
        gate = m.gate_msa  # the gate of the branch output ``a`` not yet added to the residual stream
        if self.has_cross:
            x, h = kernels.gate_residual_adaln(x, a, gate, m.shift_ca, m.scale_ca, index)
            a, gate = self.cross_attn(h, context=context, mask=context_mask), m.gate_ca
        for name, cross in self.cross_sets.items():
            shift, scale, next_gate = cross.adaLN(c).chunk(3, dim=-1)
            x, h = kernels.gate_residual_adaln(x, a, gate, shift, scale, index)
            a, gate = cross.attn(h, context=sets[name][0], mask=sets[name][1]), next_gate
        x, h = kernels.gate_residual_adaln(x, a, gate, m.shift_mlp, m.scale_mlp, index)
        x = x + gather_groups(m.gate_mlp, index) * kernels.block_mlp(self.mlp, h)  # fused by torch.compile
        return (x, kv) if return_kv else x


class FinalLayer(nn.Module):
    """adaLN-modulated norm (``norm``: LayerNorm or RMSNorm) + linear to patch pixels for one stream."""

    def __init__(self, dim: int, patch_size: int, channels: int, norm: str = "layernorm"):
        super().__init__()
        self.norm = make_norm(norm, dim)
        self.adaLN = stacked_linear(dim, dim, 2)
        self.linear = nn.Linear(dim, patch_size * patch_size * channels)
        self.fast_kernels = False  # fused LayerNorm + modulate (ditlab.models.kernels)
        self.fused_unsupported = unsupported_by_fused_kernels(norm)

    def forward(self, x, c, index):
        if self.fast_kernels and not self.fused_unsupported:
            return self._forward_fused(x, c, index)
        mod = self.adaLN(c)
        mod = gather_groups(mod, index)
        shift, scale = mod.chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))

    def _forward_fused(self, x, c, index):
        shift, scale = self.adaLN(c).chunk(2, dim=-1)
        return self.linear(kernels.adaln_modulate(x, shift, scale, index))


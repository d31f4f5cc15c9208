"""THE attention module: self- and cross-attention through PyTorch SDPA with boolean masks.

Mask convention everywhere in ditlab: a boolean tensor, True = keep (attend to this key).
Accepted shapes: (B, M) key padding, or (B, N, M) per query (e.g. causal prefixes).

Two public repos' failure modes this module is built to avoid:
- ``masked_fill(-inf)`` softmax returns NaN when every key of a query is masked (a dropped
  condition, an empty context set). Here such a query attends to all keys internally (so every
  SDPA backend stays finite, gradients included) and its output is then set to exactly zero.
- Attention dropout silently ignored by a fused path or left on at eval time: dropout is passed to
  SDPA only while ``self.training``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ditlab.models.rotary import apply_rope
from ditlab.models.stacked import stacked_linear


def check_mask(mask: torch.Tensor, batch: int, num_queries: int, num_keys: int, name: str = "mask") -> None:
    """Reject masks that would silently change meaning: non-boolean or mis-shaped."""
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a boolean tensor (True = keep), got dtype {mask.dtype}; "
            "additive float masks (-inf / finfo.min) are not accepted because they turn fully "
            "masked rows into NaN on some backends"
        )
    if mask.dim() == 2:
        expected = (batch, num_keys)
    elif mask.dim() == 3:
        expected = (batch, num_queries, num_keys)
    else:
        raise ValueError(f"{name} must have shape (B, M) or (B, N, M), got {tuple(mask.shape)}")
    if tuple(mask.shape) != expected:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {expected}")


class AttnBias(NamedTuple):
    """A boolean mask plus a float additive bias on the attention logits, passed as ``mask``.

    ``bias``: (B, M) per key or (B, N, M), finite or -inf (-inf = masked: it joins the boolean mask, so the
    "no fully masked row reaches SDPA" guarantee holds). ``mask``: as any mask here, or None.
    Used for the condition strength of token injection (ditlab.models.control, ``--cond-scale``).
    """

    mask: Optional[torch.Tensor]
    bias: torch.Tensor


class KeySplit(NamedTuple):
    """A group of keys some queries attend to without (``Attention.forward(..., split=...)``): ``keep``, the
    (M',) indices of the other keys; ``sees_all``, (N,) bool, the queries whose "without" output is the full
    one (e.g. the group's own tokens). Used by ditlab.models.control's tokens_gated.

    ``keep_range`` (a, b): set (by ``without_group``) when ``keep`` is the range [a, b) and ``sees_all`` is
    every other query. The second pass then runs on slices of q, k and v (views: no gathered copies kept for
    the backward, no scatter-add in it) and only for the queries [a, b) that need it."""

    keep: torch.Tensor
    sees_all: torch.Tensor
    keep_range: Optional[tuple[int, int]] = None

    @classmethod
    def without_group(cls, group: torch.Tensor) -> "KeySplit":
        """The split that hides the keys ``group`` ((N,) bool) from every other query; the group's own queries
        see everything. Build it once (it reads ``group`` on the host), not per forward."""
        keep = (~group).nonzero().flatten()
        first, last = (int(keep[0]), int(keep[-1])) if len(keep) else (0, -1)
        contiguous = len(keep) > 0 and last - first + 1 == len(keep)
        return cls(keep, group, (first, last + 1) if contiguous else None)


def check_bias(bias: torch.Tensor, batch: int, num_queries: int, num_keys: int) -> None:
    if not bias.dtype.is_floating_point:
        raise TypeError(f"attention bias must be a float tensor, got dtype {bias.dtype}")
    expected = (batch, num_keys) if bias.dim() == 2 else (batch, num_queries, num_keys)
    if tuple(bias.shape) != expected:
        raise ValueError(f"attention bias has shape {tuple(bias.shape)}, expected ({batch}, {num_keys}) or "
                         f"({batch}, {num_queries}, {num_keys})")
    if bool((bias.isnan() | (bias == float("inf"))).any()):
        raise ValueError("attention bias must be finite or -inf (masked); it holds NaN or +inf")


class HeadRMSNorm(nn.RMSNorm):
    """RMSNorm over the head dimension that runs in the activations' dtype.

    Under bf16 autocast q and k arrive in bf16 while the weight is fp32; torch's rms_norm then
    leaves its fused kernel for a slow composite path (and warns), so the weight is cast instead.
    """

    def __init__(self, dim: int):
        super().__init__(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


def sdpa_mask(mask, batch: int, num_queries: int, num_keys: int, dtype: torch.dtype, name: str = "mask"
              ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(the attn_mask for SDPA, (B, 1 or N) queries with at least one visible key) of a boolean mask, an
    :class:`AttnBias` or None. A query with no visible key attends everywhere (finite on every backend); the
    caller zeroes its output. With a bias, the mask is additive: the bias where visible, -inf elsewhere (never
    a whole row)."""
    bias = None
    if isinstance(mask, AttnBias):  # a float logit bias beside the boolean mask
        mask, bias = mask
        check_bias(bias, batch, num_queries, num_keys)
        bias = bias if bias.dim() == 3 else bias[:, None, :]  # (B, 1 or N, M)
        visible = bias > float("-inf")
        if mask is not None:
            check_mask(mask, batch, num_queries, num_keys, name=name)
            mask = (mask if mask.dim() == 3 else mask[:, None, :]) & visible
        else:
            mask = visible
        bias = torch.where(visible, bias, 0.0)
    if mask is None:
        return None, None
    if bias is None:  # (with a bias, the mask was checked above and combined with the bias's -inf)
        check_mask(mask, batch, num_queries, num_keys, name=name)
    if mask.dim() == 2:
        mask = mask[:, None, :]  # (B, 1, M): broadcast over queries
    query_alive = mask.any(dim=-1)  # (B, 1) or (B, N)
    mask = mask | ~query_alive[..., None]
    attn_mask = mask[:, None]  # (B, 1, N or 1, M): broadcast over heads
    if bias is not None:
        attn_mask = torch.where(attn_mask, bias[:, None].to(dtype), float("-inf"))
    return attn_mask, query_alive


class Attention(nn.Module):
    """Multi-head attention; cross-attention when ``context`` is given to forward.

    ``kv_dim`` is the width of the context tokens (defaults to ``dim``, i.e. self-attention).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kv_dim: Optional[int] = None,
        dropout: float = 0.0,
        qk_norm: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.is_cross = kv_dim is not None
        kv_dim = dim if kv_dim is None else kv_dim
        if self.is_cross:
            self.q = nn.Linear(dim, dim, bias=bias)
            self.kv = stacked_linear(kv_dim, dim, 2, bias=bias)  # k, v
        else:
            self.qkv = stacked_linear(dim, dim, 3, bias=bias)  # q, k, v
        self.q_norm = HeadRMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = HeadRMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, H, N, hd)

    def forward(
        self,
        x: torch.Tensor,  # (B, N, D)
        context: Optional[torch.Tensor] = None,  # (B, M, Dc) for cross-attention
        mask: Optional[torch.Tensor] = None,  # bool (B, M) or (B, N, M), True = keep
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,  # (cos, sin), each (N, hd/2)
        kv_prefix: Optional[tuple[torch.Tensor, torch.Tensor]] = None,  # cached (k, v), each (B, H, P, hd)
        return_kv: bool = False,
        split: Optional[KeySplit] = None,
    ):
        """(B, N, D); with ``return_kv`` also this call's keys and values (after norm and rotation).

        ``kv_prefix`` are the keys and values of P earlier tokens (a cache: ditlab.models.dit's
        prefix caching), placed before this call's own; ``mask`` then has P + N key columns.
        ``split`` (self-attention only): returns (the output over every key, the output over the keys
        ``split.keep`` only, except for the queries ``split.sees_all``, which get the first); q, k and v
        are computed once and both passes are unmasked where ``mask`` is None (flash-capable).
        """
        B, N, D = x.shape
        if split is not None and (self.is_cross or kv_prefix is not None or return_kv):
            raise ValueError("a key split is for self-attention without a prefix cache")
        if self.is_cross:
            if context is None:
                raise ValueError("cross-attention needs a context tensor of shape (B, M, Dc)")
            q = self._heads(self.q(x))
            k, v = self.kv(context).chunk(2, dim=-1)
            k, v = self._heads(k), self._heads(v)
        else:
            q, k, v = (self._heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None and not self.is_cross:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_prefix is not None:
            if self.is_cross:
                raise ValueError("kv_prefix is for self-attention; cross-attention keys come from the context")
            k, v = torch.cat([kv_prefix[0], k], dim=2), torch.cat([kv_prefix[1], v], dim=2)
        kv = (k, v)

        out, alive = self._attend(q, k, v, mask, B, N)
        if split is not None:
            def rows(a, n=N):  # (B, 1 or n) or None -> (B, n)
                return torch.ones(B, n, dtype=torch.bool, device=q.device) if a is None else a.expand(B, n)

            if split.keep_range is not None:  # slices: the queries [a, b) over the keys [a, b)
                a, b = split.keep_range
                part_mask = None if mask is None else (mask[..., a:b] if mask.dim() == 2 else mask[:, a:b, a:b])
                part, part_alive = self._attend(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], part_mask, B, b - a)
                hidden = torch.cat([out[:, :, :a], part, out[:, :, b:]], dim=2)
                hidden_alive = None
                if alive is not None or part_alive is not None:
                    full_rows = rows(alive)
                    hidden_alive = torch.cat([full_rows[:, :a], rows(part_alive, b - a), full_rows[:, b:]], dim=1)
                return self._project(out, alive), self._project(hidden, hidden_alive)
            hidden, hidden_alive = self._attend(q, k.index_select(2, split.keep), v.index_select(2, split.keep),
                                                None if mask is None else mask[..., split.keep], B, N)
            hidden = torch.where(split.sees_all[:, None], out, hidden)  # (N, 1) over (B, H, N, hd)
            if alive is not None or hidden_alive is not None:
                hidden_alive = torch.where(split.sees_all, rows(alive), rows(hidden_alive))
            return self._project(out, alive), self._project(hidden, hidden_alive)
        out = self._project(out, alive)
        return (out, kv) if return_kv else out

    def _attend(self, q, k, v, mask, B: int, N: int):
        """(SDPA output (B, H, N, hd), the queries with a visible key (B, 1 or N) or None)."""
        attn_mask, query_alive = sdpa_mask(mask, B, N, k.shape[2], q.dtype,
                                           "cross-attention mask" if self.is_cross else "attention mask")
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, N, hd)
        return out, query_alive

    def _project(self, out, query_alive) -> torch.Tensor:
        out = self.proj(out.transpose(1, 2).flatten(2))  # (B, N, D)
        if query_alive is not None:
            # Exactly zero (not the projection bias): the residual stream passes through untouched.
            out = out * query_alive[..., None].to(out.dtype)
        return out

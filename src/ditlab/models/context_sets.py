"""Context sets: the token sets a DiT cross-attends to, and the checks and nulls of their inputs.

A model has at most one unnamed set (``context=``, ``context_mask=``, ``context_drop=<tensor>``, the
single-set checkpoint keys) and any number of named ones (``contexts={name: (tensor, mask)}``,
``context_drop={name: flags}``); docs/context_sets.md. This module holds their description
(``ContextSpec``, built from the config by ``context_specs_of``) and what happens to their inputs before
the blocks see them: shape and mask checks, padding zeroed, dropped rows replaced by the set's learned
null (classifier-free guidance). The cross-attention layers themselves are part of the blocks
(ditlab.models.blocks.CrossSet); the learned nulls are parameters of the DiT, passed in here. Separate so
that the network's forward reads as the order of its steps, and the rules of context inputs sit in one place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ditlab.models.masks import bool_mask


@dataclass(frozen=True)
class ContextSpec:
    """One context set the network cross-attends to (docs/context_sets.md, "Several context sets").

    ``name`` "" is the unnamed set: ``forward(context=, context_mask=, context_drop=<tensor>)``, stored
    under the single-set keys (``blocks.N.cross_attn.*``, ``null_context``), so one-set checkpoints load.
    A named set has its own cross-attention, adaLN shift / scale / gate and learned null per block it is
    injected into (``blocks.N.cross_sets.<name>.*``, ``null_contexts.<name>``), fed by
    ``forward(contexts={name: (tensor, mask)}, context_drop={name: flags})``.
    ``blocks``: "all", "middle" (the middle third: depth // 3 .. depth - depth // 3) or "A:B" (blocks A..B-1).
    """

    name: str
    dim: int
    cross_attn_dropout: float = 0.0
    blocks: str = "all"

    def block_range(self, depth: int) -> range:
        if self.blocks == "all":
            return range(depth)
        if self.blocks == "middle":
            return range(depth // 3, depth - depth // 3)
        try:
            a, b = (int(v) for v in self.blocks.split(":"))
        except ValueError:
            a = b = -1
        if not 0 <= a < b <= depth:
            raise ValueError(f"context set {self.name!r}: blocks must be 'all', 'middle' or 'A:B' with "
                             f"0 <= A < B <= depth={depth}, got {self.blocks!r}")
        return range(a, b)


def context_specs_of(model_cfg, dims: Optional[dict[str, int]] = None) -> list[ContextSpec]:
    """The named context sets of ``model_cfg.contexts`` (ditlab.config.ContextSetConfig) as ContextSpecs;
    a set's width is its ``dim`` or, when that is None, ``dims[name]`` (from the data, RUN/model.json)."""
    specs = []
    for cs in getattr(model_cfg, "contexts", ()) or ():
        dim = cs.dim if cs.dim is not None else (dims or {}).get(cs.name)
        if dim is None:
            raise ValueError(f"model.contexts: set {cs.name!r} has no dim and the data gives none")
        if dims and cs.name in dims and dims[cs.name] != dim:
            raise ValueError(f"model.contexts: set {cs.name!r} has dim={dim} but its data is {dims[cs.name]} wide")
        specs.append(ContextSpec(cs.name, int(dim), cs.cross_attn_dropout, cs.blocks))
    return specs


def model_context_specs(context_dim: Optional[int], cross_attn_dropout: float,
                        contexts: Optional[list[ContextSpec]]) -> list[ContextSpec]:
    """A DiT's context sets, checked: ``context_dim`` (+ ``cross_attn_dropout``) is the unnamed set, first;
    ``contexts`` the others. Names are unique (one unnamed set at most) Python identifiers other than 'all'."""
    specs = list(contexts or [])
    if context_dim is not None:
        specs.insert(0, ContextSpec("", context_dim, cross_attn_dropout))
    set_names = [cs.name for cs in specs]
    if len(set(set_names)) != len(set_names):
        raise ValueError(f"context set names must be unique (one unnamed set at most), got {set_names}")
    for cs in specs:
        if cs.name == "all" or not (cs.name == "" or cs.name.isidentifier()):
            raise ValueError(f"context set name {cs.name!r}: use a Python identifier other than 'all'")
    return specs


def split_context_drop(context_drop) -> tuple[Optional[torch.Tensor], dict[str, torch.Tensor]]:
    """forward's ``context_drop`` -> (the unnamed set's flags or None, name -> flags of the named sets)."""
    if isinstance(context_drop, dict):
        named_drop = dict(context_drop)
        return named_drop.pop("", None), named_drop
    return context_drop, {}


def drop_context(context, mask, drop, null):
    """Dropped samples see the learned null (``null``: the set's (1, Dc) parameter) instead of their context
    set: with a mask, one null element (slot 0, the rest masked); without one (every token real), the null in
    every slot and still no mask. Attending to M equal keys and values gives the same output as attending to
    one (the softmax weights are equal and sum to 1; the null's gradient is the sum of the slots', the same
    total), up to rounding, so a full-length context set keeps SDPA's mask-free (flash) kernels. One
    difference: cross-attention dropout (model.cross_attn_dropout) then drops the M slots' weights one by
    one instead of the single slot's, which has the same mean and a smaller variance."""
    B, M, _ = context.shape
    null = null.to(context.dtype).expand(B, M, -1)
    context = torch.where(drop[:, None, None], null, context)
    if mask is None:
        return context, None
    only_first = (torch.arange(M, device=context.device) == 0).expand(B, M)
    return context, torch.where(drop[:, None], only_first, mask)


def unnamed_context(context, context_mask, context_drop, context_dim: Optional[int], null):
    """The unnamed set's input checked against the model (``context_dim`` None: no unnamed set), padding
    zeroed and dropped rows replaced by ``null``. ``context_mask`` is already bool (DiT._check_masks)."""
    if context_dim is None and context is not None:
        raise ValueError("context given, but the model was built without cross-attention (context_dim=None)")
    if context_dim is not None and context is None:
        raise ValueError(f"this model cross-attends to a context set: pass context (B, M, {context_dim})")
    if context_mask is not None:
        # Padding is never read: zero it before the key / value projections (a NaN there would reach
        # every output through 0 attention weight * NaN value, and the weight gradients too).
        context = torch.where(context_mask[..., None], context, 0)
    if context_drop is not None:
        context, context_mask = drop_context(context, context_mask, context_drop, null)
    return context, context_mask


def named_contexts(specs: dict[str, ContextSpec], nulls, batch: int, contexts, drops) -> dict:
    """The named sets (``specs``: name -> ContextSpec, ``nulls``: name -> learned null) checked, padding
    zeroed and dropped rows replaced by each set's own null: name -> (context (B, M, Dc), mask (B, M) bool
    or None)."""
    contexts = contexts or {}
    for name in list(contexts) + list(drops):
        if name not in specs:
            raise ValueError(f"context set {name!r} is not one of the model's named sets "
                             f"{list(specs)} (the unnamed set is context=)")
    out = {}
    for name, cs in specs.items():
        if name not in contexts:
            raise ValueError(f"this model cross-attends to the context set {name!r}: pass "
                             f"contexts={{{name!r}: (tensor (B, M, {cs.dim}), mask (B, M))}}")
        ctx, m = contexts[name]
        if ctx.dim() != 3 or ctx.shape[0] != batch or ctx.shape[2] != cs.dim:
            raise ValueError(f"context set {name!r} has shape {tuple(ctx.shape)}, expected ({batch}, M, {cs.dim})")
        m = bool_mask(m, f"mask of context set {name!r}")
        if m is not None:
            if tuple(m.shape) != (batch, ctx.shape[1]):
                raise ValueError(f"mask of context set {name!r} has shape {tuple(m.shape)}, expected "
                                 f"({batch}, {ctx.shape[1]})")
            ctx = torch.where(m[..., None], ctx, 0)  # padding is never read (see unnamed_context)
        d = drops.get(name)
        if d is not None:
            if d.dtype != torch.bool or tuple(d.shape) != (batch,):
                raise ValueError(f"context_drop[{name!r}] must be bool of shape ({batch},), got "
                                 f"{d.dtype} {tuple(d.shape)}")
            ctx, m = drop_context(ctx, m, d, nulls[name])
        out[name] = (ctx, m)
    return out

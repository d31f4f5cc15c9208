"""A condition image injected into a DiT by one of four pathways (user note 002, strategy 3 and 4).

:class:`ConditionedDiT` is a :class:`~ditlab.models.dit.DiT` whose ``streams`` include one condition
stream (``predict=False``, e.g. superres's low-resolution image) and ``injection`` says how it reaches
the target tokens:

- ``tokens``: the condition's tokens (own patch embedding and positions) are concatenated to the
  target's in every block's self-attention. Exactly the plain DiT (same parameters, same random
  initialisation, bitwise the same outputs).
- ``tokens_gated``: the tokens layout, but the other tokens see the condition tokens through a
  zero-initialised gate per block (``token_gates[i]``, (D,)): each receiving block computes its
  self-attention twice, with and without the condition's keys, and takes a_without + g (a_with -
  a_without); blocks outside ``cond_blocks`` never see the condition. At g = 0 the target path is the
  unconditional model exactly, so it is the form of ``tokens`` that two-stage training
  (train.init_from from an image run) starts with zero effect; the condition tokens themselves always
  attend to everything. Costs one more attention pass per receiving block.
- ``cross``: the condition's patch tokens (``cond_embed`` + sin-cos positions + the embedding of its
  noise level) are the DiT's single unnamed context set (``context_dim`` = hidden size), which the
  target tokens cross-attend to in the blocks of ``cond_blocks``; the condition leaves the
  self-attention sequence.
- ``branch`` (ControlNet): ``branch_blocks`` is a trainable copy of the first N main blocks reading
  condition + target tokens; after main block i (i in ``cond_blocks``, i < N) the branch block i's
  target-token output goes through the zero-initialised linear ``branch_out[i]`` and is added to the
  main hidden state. The main path sees only the target tokens.
- ``adaln``: ``cond_pool`` patch-embeds the condition, mean-pools it, adds the embedding of its noise
  level and maps it through a small MLP whose last layer is zero-initialised; the result is added to
  the (SiLU'd) adaLN conditioning vector c of the blocks in ``cond_blocks``.

Every new pathway starts with zero effect: a zero gate (cross: the adaLN-Zero gate of the cross-
attention; tokens_gated: token_gates), a zero linear layer (branch), a zero last layer (adaln); ditlab.train.init_from keeps
that when the main weights come from an unconditional run.

``forward(..., cond_scale=W)`` scales the pathway at inference (``ditlab sample --cond-scale``):
cross and branch multiply their added output by W, adaln the added embedding, tokens_gated its gates; tokens
add log(W) to
the attention logits of every query towards the condition tokens (W = 0: the condition is masked out,
exactly the unconditional layout of a task.cond_mode=dummy model). W = 1 is the plain forward.
A dropped condition (``stream_drop``, classifier-free guidance): tokens use the stream's learned null
tokens, cross the context set's learned null (DiT's context_drop), branch and adaln add nothing. W applies
to the rows that hold the condition only: a dropped row is the same for every W, so guidance extrapolates
from one unconditional prediction whatever the condition strength.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ditlab.models.attention import AttnBias, KeySplit
from ditlab.models.blocks import DiTBlock
from ditlab.models.dit import DiT
from ditlab.models.embed import PatchEmbed
from ditlab.models.mlp import reset_swiglu
from ditlab.models.streams import StreamSpec, stream_positions, stream_rope
from ditlab.models.token_groups import TokenGroups, runs_of

INJECTIONS = ("tokens", "tokens_gated", "cross", "branch", "adaln")


def _row_scale(scale: float, drop: Optional[torch.Tensor]):
    """The condition strength W per row, to multiply (B, N, D) outputs: a (B, 1, 1) float tensor where W is 1 on
    the rows whose condition is dropped (``drop``, classifier-free guidance's unconditional half), or the float
    W when no row is dropped (and at W = 1). A dropped row holds the learned null, not the condition: W scales
    the condition's contribution, so the unconditional prediction that guidance extrapolates from stays the same
    for every W (branch and adaln add nothing to a dropped row for any W already)."""
    if drop is None or scale == 1.0:
        return scale
    rows = torch.where(drop, torch.ones((), device=drop.device), torch.full((), scale, device=drop.device))
    return rows[:, None, None]


def cond_block_range(spec: str, depth: int, key: str = "task.cond_blocks") -> range:
    """'all', 'middle' (the middle third: depth // 3 .. depth - depth // 3) or 'A:B' (blocks A .. B-1)."""
    spec = str(spec)
    if spec == "all":
        return range(depth)
    if spec == "middle":
        return range(depth // 3, depth - depth // 3)
    try:
        a, b = (int(v) for v in spec.split(":"))
    except ValueError:
        a = b = -1
    if not 0 <= a < b <= depth:
        raise ValueError(f"{key}={spec!r}: expected 'all', 'middle' or 'A:B' with 0 <= A < B <= depth={depth}")
    return range(a, b)


def _init_linear_xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _init_block(block: DiTBlock) -> None:
    """As DiT.initialize_weights does for a block: xavier linears, adaLN-Zero (the block is the identity)."""
    _init_linear_xavier(block)
    reset_swiglu(block)  # a SwiGLU's gate and value halves as two layers, as DiT.initialize_weights does
    nn.init.zeros_(block.adaLN.weight)
    nn.init.zeros_(block.adaLN.bias)


def _init_patch_embed(pe: PatchEmbed) -> None:
    nn.init.xavier_uniform_(pe.proj.weight.view(pe.proj.weight.shape[0], -1))
    nn.init.zeros_(pe.proj.bias)


class CondPool(nn.Module):
    """adaln injection: patch embedding -> mean over tokens (+ noise-level embedding) -> MLP (last layer zero)."""

    def __init__(self, channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.embed = PatchEmbed(channels, hidden_size, patch_size)
        self.fc1 = nn.Linear(hidden_size, hidden_size)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def reset_parameters(self) -> None:
        _init_patch_embed(self.embed)
        _init_linear_xavier(self)
        nn.init.zeros_(self.fc2.weight)  # zero effect at initialisation
        nn.init.zeros_(self.fc2.bias)

    def forward(self, low: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.embed(low).mean(dim=1) + level)))  # (B, D)


class ConditionedDiT(DiT):
    """A DiT with one condition stream injected by ``injection`` (module docstring)."""

    def __init__(self, streams: list[StreamSpec], cond_name: str, injection: str = "tokens",
                 cond_blocks: str = "all", branch_blocks: int = 0, **dit_kwargs):
        if injection not in INJECTIONS:
            raise ValueError(f"task.cond_injection={injection!r}: choose one of {', '.join(INJECTIONS)}")
        cond = [s for s in streams if s.name == cond_name]
        if len(cond) != 1 or cond[0].predict or cond[0].kind != "image":
            raise ValueError(f"ConditionedDiT needs one image condition stream named {cond_name!r} (predict=False)")
        self_spec = cond[0]
        self_main = [s for s in streams if s.name != cond_name]
        if injection == "tokens":
            if str(cond_blocks) != "all":
                raise ValueError(f"task.cond_blocks={cond_blocks!r} applies to task.cond_injection=tokens_gated, cross, "
                                 "branch or adaln; with tokens the condition tokens are in every block's "
                                 "self-attention (use task.cond_blocks=all, or tokens_gated)")
            super().__init__(streams, **dit_kwargs)
        elif injection == "tokens_gated":
            super().__init__(streams, **dit_kwargs)  # the tokens layout; the gates are added below
        else:
            if dit_kwargs.get("context_dim") is not None or dit_kwargs.get("contexts"):
                # cross rebuilds the blocks outside cond_blocks without cross-attention, and branch / adaln
                # have no path for the sets: refuse them rather than drop them silently.
                raise ValueError(f"task.cond_injection={injection} cannot be combined with another context set")
            if len(self_main) != 1:
                raise ValueError(f"task.cond_injection={injection} needs exactly one predicted stream")
            if injection == "cross":
                dit_kwargs["context_dim"] = dit_kwargs.get("hidden_size", 384)
            super().__init__(self_main, **dit_kwargs)
        if self.route is not None and injection != "tokens":
            raise ValueError(f"model.route_fraction with task.cond_injection={injection}: token routing needs the "
                             "plain token sequence (task.cond_injection=tokens)")
        self.injection, self.cond_spec, self.cond_name = injection, self_spec, cond_name
        self.cond_block_ids = tuple(cond_block_range(cond_blocks, self.depth))
        self._pathway: Optional[dict] = None  # per-forward state read by _block_step
        D = self.hidden_size
        if injection in ("cross", "branch"):
            self.cond_embed = PatchEmbed(self_spec.channels, D, self_spec.patch_size)
            _init_patch_embed(self.cond_embed)
            self.register_buffer("pos_cond", stream_positions(self_spec, D), persistent=False)
        if injection == "cross":
            for i, block in enumerate(self.blocks):  # blocks outside cond_blocks: no cross-attention
                if i not in self.cond_block_ids:
                    new = DiTBlock(D, self.num_heads, block.mlp_ratio, block.attn.dropout,
                                   not isinstance(block.attn.q_norm, nn.Identity), mlp=block.mlp_kind,
                                   norm=block.norm_kind)
                    _init_block(new)
                    self.blocks[i] = new
        elif injection == "branch":
            self._build_branch(branch_blocks, cond_blocks, self_spec, self_main[0])
        elif injection == "adaln":
            self.cond_pool = CondPool(self_spec.channels, D, self_spec.patch_size)
            self.cond_pool.reset_parameters()
        elif injection == "tokens_gated":
            self.token_gates = nn.ParameterDict({str(i): nn.Parameter(torch.zeros(D)) for i in self.cond_block_ids})
            start, stop = self._cond_columns()
            rows = torch.ones(self.num_class_tokens + self.num_tokens, dtype=torch.bool)
            rows[start:stop] = False  # the condition's own queries see everything
            # Receiving blocks: the keys other than the condition's, and the condition's own rows (which
            # always see every key), for one qkv projection and two unmasked SDPA passes (KeySplit).
            split = KeySplit.without_group(~rows)
            self.register_buffer("cond_keep", split.keep, persistent=False)
            self.register_buffer("cond_rows", split.sees_all, persistent=False)
            self.cond_keep_range = split.keep_range  # python ints: the slice path (no class tokens before it)
            # The other blocks: one pass in which no other query sees the condition's keys. A boolean mask,
            # not an AttnBias: no value check (a host sync, a graph break under compile) per block.
            self.register_buffer("cond_hidden", ~(rows[:, None] & ~rows[None, :]), persistent=False)
        # train.init_from keeps the fresh initialisation of these (behind a zero gate), not zero
        self.fresh_at_init_from = ((f"patch_embed.{cond_name}.",) if injection == "tokens_gated" else ())

    def after_init_from(self, loaded: set[str]) -> Optional[str]:
        """ditlab.train.init_from's last step: tokens_gated loaded from a run that already read the condition
        tokens in every block (a ``tokens`` run: its condition patch embedding is among the loaded names, its
        gates are not) opens every gate (1), which is that run exactly where task.cond_blocks is all. Returns
        what was done, or None."""
        if self.injection != "tokens_gated" or f"patch_embed.{self.cond_name}.proj.weight" not in loaded:
            return None
        if any(name.startswith("token_gates.") for name in loaded):
            return None  # a tokens_gated run: its own gates were loaded
        with torch.no_grad():
            for gate in self.token_gates.values():
                gate.fill_(1.0)
        note = ("token_gates set to 1: the loaded run read the condition tokens (task.cond_injection=tokens), and "
                "open gates reproduce it")
        if len(self.cond_block_ids) < self.depth:
            note += (f"; the {self.depth - len(self.cond_block_ids)} of {self.depth} blocks outside task.cond_blocks "
                     "no longer see the condition, so the output at step 0 differs from the loaded run's there")
        return note

    def _cond_columns(self) -> tuple[int, int]:
        """[start, stop) of the condition tokens in the self-attention sequence (class tokens lead it)."""
        start = self.num_class_tokens
        for s in self.streams:
            if s.name == self.cond_name:
                return start, start + s.num_tokens
            start += s.num_tokens
        raise ValueError(f"no stream {self.cond_name!r} in the self-attention sequence")

    def _build_branch(self, branch_blocks: int, cond_blocks, self_spec: StreamSpec, target: StreamSpec) -> None:
        """ControlNet: a trainable copy of the first N blocks reading condition + target tokens, added to the
        main blocks of cond_blocks through zero-initialised linears."""
        D = self.hidden_size
        n = branch_blocks or self.depth // 2
        if not 1 <= n <= self.depth:
            raise ValueError(f"task.branch_blocks={branch_blocks}: expected 1 .. depth={self.depth} (0 = depth // 2)")
        receive = [i for i in self.cond_block_ids if i < n]
        if not receive:
            raise ValueError(f"task.cond_blocks={cond_blocks!r} selects no block among the branch's first "
                             f"{n} (task.branch_blocks): nothing would receive the branch")
        if receive[-1] != n - 1:
            raise ValueError(f"task.branch_blocks={n}: with task.cond_blocks={cond_blocks!r} the last block that "
                             f"receives the branch is {receive[-1]}; set task.branch_blocks={receive[-1] + 1}")
        main = self.blocks[0]
        self.branch_blocks = nn.ModuleList(
            DiTBlock(D, self.num_heads, main.mlp_ratio, main.attn.dropout,
                     not isinstance(main.attn.q_norm, nn.Identity), mlp=main.mlp_kind, norm=main.norm_kind)
            for _ in range(n))
        for block in self.branch_blocks:
            _init_block(block)
        self.branch_out = nn.ModuleDict({str(i): nn.Linear(D, D) for i in receive})
        for lin in self.branch_out.values():  # ControlNet's zero convolutions
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.register_buffer("branch_index", torch.cat([torch.zeros(self_spec.num_tokens, dtype=torch.long),
                                                        torch.ones(target.num_tokens, dtype=torch.long)]),
                             persistent=False)
        if self.pos_embed_kind == "rope":
            tables = [stream_rope(s, D // self.num_heads) for s in (self_spec, target)]
            self.register_buffer("branch_rope_cos", torch.cat([c for c, _ in tables]), persistent=False)
            self.register_buffer("branch_rope_sin", torch.cat([s for _, s in tables]), persistent=False)

    # ---- the pathway ----------------------------------------------------------------------------
    def _block_step(self, i, block, h, c, index, mask, rope, context, context_mask, **kw):
        st = self._pathway
        if st is None:
            return super()._block_step(i, block, h, c, index, mask, rope, context, context_mask, **kw)
        if "gate_scale" in st:  # tokens_gated; the scale is 1.0 or (B, 1, 1) per row
            gate = self.token_gates[str(i)] if str(i) in self.token_gates else None
            gate_scale = st["gate_scale"]
            if gate is not None and not (isinstance(gate_scale, float) and gate_scale == 1.0):
                gate = gate * gate_scale

            def hidden():  # (B, N, N) bool, True = visible; built only for the blocks without a gate
                m = self.cond_hidden.expand(h.shape[0], -1, -1)
                return m if mask is None else m & (mask if mask.dim() == 3 else mask[:, None, :])

            split = KeySplit(self.cond_keep, self.cond_rows, self.cond_keep_range)
            return super()._block_step(i, block, h, c, index, mask, rope, context, context_mask,
                                       attn_gate=(hidden, split, gate), **kw)
        if st.get("bias") is not None:
            mask = AttnBias(mask, st["bias"])
        if st.get("c_add") is not None and i in self.cond_block_ids:
            c = c + st["c_add"]
        scale = st.get("cross_scale")  # a float or (B, 1, 1) per row; absent at W = 1
        if scale is not None and getattr(block, "has_cross", False):
            handle = block.cross_attn.register_forward_hook(
                lambda mod, args, out: out * (scale.to(out.dtype) if torch.is_tensor(scale) else scale))
            try:
                h = super()._block_step(i, block, h, c, index, mask, rope, context, context_mask, **kw)
            finally:
                handle.remove()
        else:
            h = super()._block_step(i, block, h, c, index, mask, rope, context, context_mask, **kw)
        inject = st.get("inject")
        if inject is not None and i in inject:
            h = h + inject[i]
        return h

    def _run(self, state, *args, **kwargs):
        self._pathway = state
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._pathway = None

    def _tokens_bias(self, batch: int, scale: float, device, drop: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, N) additive key bias: log(scale) on the condition tokens' columns, 0 elsewhere and on the rows
        whose condition is dropped (``drop``, (B,) bool: they hold the null tokens; see _row_scale)."""
        start, stop = self._cond_columns()
        col = torch.zeros(self.num_class_tokens + self.num_tokens, device=device)
        col[start:stop] = math.log(scale) if scale > 0 else float("-inf")
        bias = col.expand(batch, -1)
        if drop is not None:
            bias = torch.where(drop.to(device)[:, None], torch.zeros((), device=device), bias)
        return bias

    def _branch(self, x, t, low, s, labels, label_drop) -> dict[int, torch.Tensor]:
        """Branch block outputs on the target tokens, through the zero linears: block -> (B, N_t, D)."""
        target = self.streams[0]
        ht = self._embed(x, self.streams)  # the main path's target embedding (+ positions)
        hc = self.cond_embed(low)
        if self.pos_embed_kind == "sincos":
            hc = hc + self.pos_cond.to(hc.dtype)
        h = torch.cat([hc, ht], dim=1)
        tt = t[target.name]
        if s.dim() == 1 and tt.dim() == 1:
            # (B, 2): condition, target; the two runs of tokens spread the modulation without a gather
            times = torch.stack([s, tt], dim=1)
            index = TokenGroups(self.branch_index, runs_of([self.cond_spec.num_tokens, target.num_tokens]))
        else:
            B = low.shape[0]
            times = torch.cat([s[:, None].expand(B, self.cond_spec.num_tokens) if s.dim() == 1 else s,
                               tt[:, None].expand(B, target.num_tokens) if tt.dim() == 1 else tt], dim=1)
            index = None
        c = self.t_embed(times)
        if self.label_embed is not None and self.label_in_adaln:  # the branch has no class tokens of its own
            if labels is None:
                raise ValueError("this model is class-conditional: pass labels")
            c = c + self.label_embed(labels, label_drop)[:, None]
        c = torch.nn.functional.silu(c)
        rope = (self.branch_rope_cos, self.branch_rope_sin) if self.pos_embed_kind == "rope" else None
        out, Nc = {}, self.cond_spec.num_tokens
        for j, block in enumerate(self.branch_blocks):
            h = block(h, c, index, None, rope, None, None)
            if str(j) in self.branch_out:
                out[j] = self.branch_out[str(j)](h[:, Nc:])
        return out

    def _take_condition(self, x, t, token_mask, stream_drop, args):
        """(x, t without the condition stream, its image (B, C, H, W), its noise level, its CFG drop or None);
        checks their shapes, and leaves the other streams' drops in ``args``."""
        name = self.cond_name
        if name not in x or name not in t:
            raise ValueError(f"missing stream {name!r}: the model expects streams "
                             f"{[s.name for s in self.streams] + [name]}")
        x, t = dict(x), dict(t)
        low, s = x.pop(name), t.pop(name)
        B = low.shape[0]
        if tuple(low.shape[1:]) != self.cond_spec.shape:
            raise ValueError(f"stream {name!r} has shape {tuple(low.shape)}, expected "
                             f"(B, {', '.join(map(str, self.cond_spec.shape))})")
        if not (s.shape == (B,) or s.shape == (B, self.cond_spec.num_tokens)):
            raise ValueError(f"noise level of stream {name!r} has shape {tuple(s.shape)}, expected ({B},) or "
                             f"({B}, {self.cond_spec.num_tokens})")
        if token_mask is not None and name in token_mask:
            raise ValueError(f"token_mask[{name!r}]: the condition can be masked out only with "
                             "task.cond_injection=tokens")
        drop = None
        if stream_drop is not None:
            stream_drop = dict(stream_drop)
            drop = stream_drop.pop(name, None)
            args["stream_drop"] = stream_drop or None
        if drop is not None and (drop.dtype != torch.bool or tuple(drop.shape) != (B,)):
            raise ValueError(f"stream_drop[{name!r}] must be bool of shape ({B},)")
        return x, t, low, s, drop

    def forward(self, x, t, labels=None, label_drop=None, token_mask=None, context=None, context_mask=None,
                stream_drop=None, context_drop=None, attn_mask=None, cond_scale: float = 1.0, **kwargs):
        scale = float(cond_scale)
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"--cond-scale must be a finite number >= 0, got {cond_scale}")
        args = dict(labels=labels, label_drop=label_drop, token_mask=token_mask, context=context,
                    context_mask=context_mask, stream_drop=stream_drop, context_drop=context_drop,
                    attn_mask=attn_mask, **kwargs)
        if self.injection in ("tokens", "tokens_gated"):
            if scale == 1.0 and self.injection == "tokens":
                return super().forward(x, t, **args)  # today's path, bitwise
            B = next(iter(x.values())).shape[0]
            drop = (stream_drop or {}).get(self.cond_name)  # DiT itself swaps in the null tokens of these rows
            if drop is not None and (drop.dtype != torch.bool or tuple(drop.shape) != (B,)):
                drop = None  # malformed: DiT's own check rejects it with the message that names it
            if self.injection == "tokens_gated":
                return self._run({"gate_scale": _row_scale(scale, drop)}, x, t, **args)
            return self._run({"bias": self._tokens_bias(B, scale, self.null_tokens[self.cond_name].device, drop)},
                             x, t, **args)

        x, t, low, s, drop = self._take_condition(x, t, token_mask, stream_drop, args)
        B = low.shape[0]

        if self.injection == "cross":
            if context is not None or context_drop is not None:
                raise ValueError("task.cond_injection=cross: the context set is the condition; pass no context")
            level = s if s.dim() == 1 else s.mean(dim=1)
            ctx = self.cond_embed(low) + self.pos_cond.to(low.dtype) + self.t_embed(level)[:, None]
            args.update(context=ctx, context_mask=None, context_drop=drop)
            state = None if scale == 1.0 else {"cross_scale": _row_scale(scale, drop)}
            return self._run(state, x, t, **args)

        if scale == 0.0:  # the unconditional pathway: nothing added
            return self._run(None, x, t, **args)
        keep = None
        if drop is not None or scale != 1.0:
            keep = (~drop).to(low.dtype) if drop is not None else torch.ones(B, device=low.device, dtype=low.dtype)
            keep = keep * scale
        if self.injection == "branch":
            inject = self._branch(x, t, low, s, labels, label_drop)
            if keep is not None:
                inject = {j: v * keep[:, None, None].to(v.dtype) for j, v in inject.items()}
            if self.num_class_tokens:  # nothing is added to the class tokens leading the main sequence
                inject = {j: torch.nn.functional.pad(v, (0, 0, self.num_class_tokens, 0)) for j, v in inject.items()}
            return self._run({"inject": inject}, x, t, **args)
        # adaln
        level = s if s.dim() == 1 else s.mean(dim=1)
        e = self.cond_pool(low, self.t_embed(level))
        if keep is not None:
            e = e * keep[:, None].to(e.dtype)
        return self._run({"c_add": e[:, None]}, x, t, **args)

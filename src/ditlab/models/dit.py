"""The diffusion transformer over token streams, with adaLN-Zero modulation per token.

A sample is a set of image *streams* (a target, a low-resolution condition, a second scale...).
Each stream has its own patch embedding, its own positional grid and its own noise level, which
may be given per sample (B,) or per token (B, N_s). The streams' tokens are concatenated into one
sequence; every block modulates every token with the conditioning vector of *its* noise level, so
a clean condition token (t = 0) and a noised target token in the same sample are told apart.

When every stream's t is per sample, the modulation is computed once per (sample, stream) and
gathered to tokens (a single stream needs no gather at all: it broadcasts), so the per-token
generality costs nothing in the common case.

This module assembles the network (DiT: conditioning groups, class tokens, learned nulls, prefix
caching for ICL sampling) and builds it from a config (build_dit, dit_kwargs). Its parts live in
ditlab.models.streams (StreamSpec, embeddings and positions of a stream, the size table),
ditlab.models.blocks (DiTBlock, FinalLayer, adaLN), ditlab.models.context_sets (ContextSpec and the
context inputs) and ditlab.models.masks; they are re-exported here, the names' old home.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ditlab.models.blocks import (AdaLNMods, CrossSet, DiTBlock, FinalLayer, modulate,  # noqa: F401  (re-exported)
                                  unsupported_by_fused_kernels)
from ditlab.models.class_tokens import ClassTokens, with_class_keys, with_class_rows
from ditlab.models.context_sets import (ContextSpec, context_specs_of, model_context_specs,  # noqa: F401
                                        named_contexts, split_context_drop, unnamed_context)
from ditlab.models.embed import LabelEmbedder, PatchEmbed, TimestepEmbedder
from ditlab.models.masks import bool_mask, combine_masks
from ditlab.models.mlp import MLP_KINDS, Mlp, reset_swiglu  # noqa: F401  (Mlp: its old home)
from ditlab.models.norms import NORM_KINDS
from ditlab.models.skips import LongSkips
from ditlab.models.streams import (DIT_ARCHS, DIT_SIZES, PATCH_SIZES, StreamSpec, TokenEmbed,  # noqa: F401
                                   parse_arch, stream_positions, stream_rope, unpatchify)
from ditlab.models.routing import parse_route, route, unroute
from ditlab.models.token_groups import Index, TokenGroups, runs_of, slice_groups


def check_options(streams: list[StreamSpec], pos_embed: str, output_init: str, mlp: str, norm: str,
                  class_tokens: int, num_classes: int, label_in_adaln: bool) -> None:
    """The DiT's settings that would otherwise fail late or silently, as errors naming the model.* key."""
    if not streams:
        raise ValueError("a DiT needs at least one stream")
    names = [s.name for s in streams]
    if len(set(names)) != len(names):
        raise ValueError(f"stream names must be unique, got {names}")
    if pos_embed not in ("sincos", "rope"):
        raise ValueError(f"model.pos_embed must be 'sincos' or 'rope', got {pos_embed!r}")
    if output_init not in ("zero", "xavier"):
        raise ValueError(f"model.output_init must be 'zero' or 'xavier', got {output_init!r}")
    if mlp not in MLP_KINDS:
        raise ValueError(f"model.mlp must be one of {', '.join(MLP_KINDS)}, got {mlp!r}")
    if norm not in NORM_KINDS:
        raise ValueError(f"model.norm must be one of {', '.join(NORM_KINDS)}, got {norm!r}")
    if class_tokens < 0:
        raise ValueError(f"model.class_tokens must be >= 0, got {class_tokens}")
    if class_tokens and num_classes <= 0:
        raise ValueError(f"model.class_tokens={class_tokens} needs a class-conditional model (model.num_classes > 0)")
    if not label_in_adaln and not class_tokens:
        raise ValueError("model.label_in_adaln=false needs model.class_tokens > 0: the label would reach "
                         "the network nowhere")


class DiT(nn.Module):
    def __init__(
        self,
        streams: list[StreamSpec],
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        context_dim: Optional[int] = None,
        pos_embed: str = "sincos",
        attn_dropout: float = 0.0,
        qk_norm: bool = False,
        cross_attn_dropout: float = 0.0,
        output_init: str = "zero",
        contexts: Optional[list[ContextSpec]] = None,
        mlp: str = "gelu",
        norm: str = "layernorm",
        long_skips: bool = False,
        class_tokens: int = 0,
        label_in_adaln: bool = True,
        route_fraction: float = 0.0,
        route_blocks: str = "",
    ):
        """``context_dim`` (+ ``cross_attn_dropout``): the unnamed context set in every block, as
        ``contexts=[ContextSpec("", context_dim, cross_attn_dropout)]``; ``contexts``: context sets
        (:class:`ContextSpec`), at most one unnamed.

        Architecture options (docs/architecture_options.md; the defaults are DiT, bitwise): ``mlp`` "gelu" |
        "swiglu" (ditlab.models.mlp), ``norm`` "layernorm" | "rmsnorm" before every adaLN modulation
        (ditlab.models.norms), ``long_skips`` U-ViT skips (ditlab.models.skips), ``class_tokens`` N > 0
        in-context class tokens and ``label_in_adaln`` whether the label also enters adaLN
        (ditlab.models.class_tokens); ``route_fraction`` / ``route_blocks`` token routing in training
        (ditlab.models.routing)."""
        super().__init__()
        specs = model_context_specs(context_dim, cross_attn_dropout, contexts)
        unnamed = next((cs for cs in specs if cs.name == ""), None)
        context_dim = unnamed.dim if unnamed is not None else None
        self.context_specs = {cs.name: cs for cs in specs if cs.name}  # the named sets
        check_options(streams, pos_embed, output_init, mlp, norm, class_tokens, num_classes, label_in_adaln)
        self.mlp_kind, self.norm_kind = mlp, norm
        self.num_class_tokens, self.label_in_adaln = int(class_tokens), bool(label_in_adaln)
        self.output_init = output_init
        self.streams = list(streams)
        self.hidden_size, self.depth, self.num_heads = hidden_size, depth, num_heads
        self.context_dim = context_dim
        self.pos_embed_kind = pos_embed

        self.patch_embed = nn.ModuleDict({
            s.name: PatchEmbed(s.channels, hidden_size, s.patch_size) if s.kind == "image"
            else TokenEmbed(s.channels, hidden_size) for s in streams})
        self.t_embed = TimestepEmbedder(hidden_size)
        self.label_embed = LabelEmbedder(num_classes, hidden_size) if num_classes > 0 else None
        ranges = {cs.name: cs.block_range(depth) for cs in specs}
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, attn_dropout, qk_norm,
                     context_dim if unnamed is not None and i in ranges[""] else None,
                     unnamed.cross_attn_dropout if unnamed is not None else 0.0,
                     {n: (cs.dim, cs.cross_attn_dropout) for n, cs in self.context_specs.items() if i in ranges[n]},
                     mlp=mlp, norm=norm)
            for i in range(depth)
        )
        self.final = nn.ModuleDict({s.name: FinalLayer(hidden_size, s.patch_size, s.channels, norm)
                                    for s in streams if s.predict})
        # Learned nulls for classifier-free guidance: a dropped condition stream becomes these token
        # embeddings, a dropped context set one learned element. Chosen with torch.where, so every
        # parameter takes part in every step (DDP needs no find_unused_parameters).
        self.null_tokens = nn.ParameterDict({s.name: nn.Parameter(torch.zeros(s.num_tokens, hidden_size))
                                             for s in streams if not s.predict})
        self.null_context = nn.Parameter(torch.zeros(1, context_dim)) if context_dim is not None else None
        self.null_contexts = nn.ParameterDict({n: nn.Parameter(torch.zeros(1, cs.dim))
                                               for n, cs in self.context_specs.items()})
        # Options off: None, so a default model has exactly today's modules and state-dict keys.
        self.long_skips = LongSkips(depth, hidden_size) if long_skips else None
        self.route = parse_route(route_fraction, route_blocks, depth)  # token routing in training, or None
        if self.route is not None and long_skips:
            raise ValueError("model.route_fraction with model.long_skips: a long skip would join sequences of "
                             "different lengths across the routed blocks")
        self.class_tokens = ClassTokens(class_tokens, hidden_size) if class_tokens else None

        self._register_token_tables(streams, pos_embed, class_tokens)
        self.initialize_weights()

    def _register_token_tables(self, streams: list[StreamSpec], pos_embed: str, class_tokens: int) -> None:
        """Fixed position tables (not parameters, not saved: they are a function of the specs), and the
        token -> stream / conditioning-group indices."""
        for s in streams:
            if pos_embed == "sincos":
                self.register_buffer(f"pos_{s.name}", stream_positions(s, self.hidden_size), persistent=False)
        if pos_embed == "rope":
            tables = [stream_rope(s, self.hidden_size // self.num_heads) for s in streams]
            if class_tokens:  # the class tokens lead the sequence, unrotated (angle 0)
                hd2 = self.hidden_size // self.num_heads // 2
                tables.insert(0, (torch.ones(class_tokens, hd2), torch.zeros(class_tokens, hd2)))
            self.register_buffer("rope_cos", torch.cat([c for c, _ in tables]), persistent=False)
            self.register_buffer("rope_sin", torch.cat([s for _, s in tables]), persistent=False)
        # Token -> stream index, used to spread per-(sample, stream) modulation over the tokens; with its runs of
        # consecutive tokens (TokenGroups), which spread it without a gather (ditlab.models.token_groups).
        stream_of_token = torch.cat([torch.full((s.num_tokens,), i) for i, s in enumerate(streams)])
        self.register_buffer("stream_of_token", stream_of_token, persistent=False)
        self._stream_runs = runs_of([s.num_tokens for s in streams])
        if class_tokens:  # sequence position -> conditioning group, group 0 being the class tokens' (t = 0)
            self.register_buffer("group_of_token", torch.cat([torch.zeros(class_tokens, dtype=stream_of_token.dtype),
                                                              stream_of_token + 1]), persistent=False)
            self._group_runs = runs_of([class_tokens] + [s.num_tokens for s in streams])

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.streams)

    def initialize_weights(self) -> None:
        def _xavier(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(_xavier)
        for pe in self.patch_embed.values():  # initialise the patch convolution like a linear layer, as DiT does
            if isinstance(pe, PatchEmbed):
                nn.init.xavier_uniform_(pe.proj.weight.view(pe.proj.weight.shape[0], -1))
                nn.init.zeros_(pe.proj.bias)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.table.weight, std=0.02)
        for null in self.null_tokens.values():
            nn.init.normal_(null, std=0.02)
        if self.null_context is not None:
            nn.init.normal_(self.null_context, std=0.02)
        # adaLN-Zero: every block starts as the identity, every output as zero.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN.weight)
            nn.init.zeros_(block.adaLN.bias)
        for final in self.final.values():
            for lin in (final.adaLN, final.linear):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
            if self.output_init == "xavier":
                # A network whose only useful input is its context (the deterministic ICL baseline) starts
                # at a saddle with a zero output layer: every upstream gradient is multiplied by those
                # weights. Random ones remove that factor (BENCHMARKS.md, issue 6).
                nn.init.xavier_uniform_(final.linear.weight)
        for null in self.null_contexts.values():  # last: one-set models draw the same initial weights as before
            nn.init.normal_(null, std=0.02)
        for block in self.blocks:  # named sets' adaLN-Zero: each starts with zero gate (no effect)
            for cross in block.cross_sets.values():
                nn.init.zeros_(cross.adaLN.weight)
                nn.init.zeros_(cross.adaLN.bias)
        # The options' parameters last, each drawing random numbers only when it is on: the default
        # model draws exactly today's initial weights.
        reset_swiglu(self)
        if self.long_skips is not None:
            self.long_skips.reset_parameters()  # [I, 0]: starts as the plain network, draws nothing
        if self.class_tokens is not None:
            self.class_tokens.reset_parameters()

    def _conditioning(self, t: dict[str, torch.Tensor], labels, label_drop, batch: int):
        """Per-group conditioning (B, G, D) and the token -> group index (None = broadcast / identity).
        The index covers the whole sequence: the class tokens (if any) first, in a group of noise level 0."""
        K = self.num_class_tokens
        per_sample = all(t[s.name].dim() == 1 for s in self.streams)
        if per_sample:
            times = torch.stack([t[s.name] for s in self.streams], dim=1)  # (B, S)
            index = None if len(self.streams) == 1 else TokenGroups(self.stream_of_token, self._stream_runs)
            if K:
                times = torch.cat([torch.zeros_like(times[:, :1]), times], dim=1)  # (B, 1 + S)
                index = TokenGroups(self.group_of_token, self._group_runs)
        else:  # at least one stream has per-token noise levels: one group per token
            parts = []
            for s in self.streams:
                ts = t[s.name]
                parts.append(ts[:, None].expand(batch, s.num_tokens) if ts.dim() == 1 else ts)
            if K:
                parts.insert(0, torch.zeros_like(parts[0][:, :1]).expand(batch, K))
            times = torch.cat(parts, dim=1)  # (B, K + N)
            index = None
        c = self.t_embed(times)  # (B, G, D)
        if self.label_embed is not None and self.label_in_adaln:
            c = c + self._label_embedding(labels, label_drop)[:, None]
        return torch.nn.functional.silu(c), index

    def _label_embedding(self, labels, label_drop) -> torch.Tensor:
        if labels is None:
            raise ValueError("this model is class-conditional: pass labels (use the null label "
                             f"{self.label_embed.null_label} for unconditional)")
        return self.label_embed(labels, label_drop)

    def _with_class_tokens(self, h, labels, label_drop, mask):
        """Prepend the class tokens to the embedded streams ``h`` (B, N, D) and widen ``mask`` (None, (B, N)
        key padding or (B, N, N)) to them (ditlab.models.class_tokens)."""
        K = self.num_class_tokens
        tokens = self.class_tokens(self._label_embedding(labels, label_drop).to(h.dtype))
        if mask is not None:
            mask = with_class_keys(mask, K) if mask.dim() == 2 else with_class_rows(mask, K)
        return torch.cat([tokens, h], dim=1), mask

    def _check_inputs(self, x, t):
        for s in self.streams:
            if s.name not in x or s.name not in t:
                raise ValueError(f"missing stream {s.name!r}: the model expects streams {[s.name for s in self.streams]}")
            xs, ts = x[s.name], t[s.name]
            if tuple(xs.shape[1:]) != s.shape:
                raise ValueError(f"stream {s.name!r} has shape {tuple(xs.shape)}, expected "
                                 f"(B, {', '.join(map(str, s.shape))})")
            if not (ts.shape == (xs.shape[0],) or ts.shape == (xs.shape[0], s.num_tokens)):
                raise ValueError(f"noise level of stream {s.name!r} has shape {tuple(ts.shape)}, expected "
                                 f"({xs.shape[0]},) per sample or ({xs.shape[0]}, {s.num_tokens}) per token")

    def _check_masks(self, batch: int, token_mask, context, context_mask, context_drop, stream_drop, label_drop):
        """Masks and drop flags must match the batch exactly: a misspelt stream name or a broadcastable
        shape would otherwise be accepted silently (and padding attended to). Returns token_mask and
        context_mask as bool (0 / 1 float or integer masks converted, see ditlab.models.masks.bool_mask)."""
        def need(t, shape, what):
            if t is None:
                return
            if t.dtype != torch.bool:
                raise TypeError(f"{what} must be boolean (True = keep / drop), got dtype {t.dtype}")
            if tuple(t.shape) != shape:
                raise ValueError(f"{what} has shape {tuple(t.shape)}, expected {shape}")

        names = {s.name: s for s in self.streams}
        if token_mask is not None:
            token_mask = {name: bool_mask(m, f"token_mask[{name!r}]") for name, m in token_mask.items()}
        context_mask = bool_mask(context_mask, "context_mask")
        for name, m in (token_mask or {}).items():
            if name not in names:
                raise ValueError(f"token_mask names stream {name!r}; the model's streams are {list(names)}")
            need(m, (batch, names[name].num_tokens), f"token_mask[{name!r}]")
        for name, d in (stream_drop or {}).items():
            if name in names:  # unknown names are reported by forward with the condition-stream rule
                need(d, (batch,), f"stream_drop[{name!r}]")
        need(label_drop, (batch,), "label_drop")
        need(context_drop, (batch,), "context_drop")
        if context is not None:
            if context.dim() != 3 or context.shape[0] != batch:
                raise ValueError(f"context has shape {tuple(context.shape)}, expected ({batch}, M, {self.context_dim})")
            need(context_mask, (batch, context.shape[1]), "context_mask")
        return token_mask, context_mask

    def forward(
        self,
        x: dict[str, torch.Tensor],  # name -> (B, C, H, W)
        t: dict[str, torch.Tensor],  # name -> (B,) or (B, N_s) noise level in [0, 1], 0 = clean
        labels: Optional[torch.Tensor] = None,  # (B,) int64
        label_drop: Optional[torch.Tensor] = None,  # (B,) bool: use the null label
        token_mask: Optional[dict[str, torch.Tensor]] = None,  # name -> (B, N_s) bool (or 0/1), True = real token
        context: Optional[torch.Tensor] = None,  # (B, M, Dc)
        context_mask: Optional[torch.Tensor] = None,  # (B, M) bool (or 0/1), True = real element
        stream_drop: Optional[dict[str, torch.Tensor]] = None,  # condition name -> (B,) bool: use the null
        context_drop: Optional[torch.Tensor | dict[str, torch.Tensor]] = None,  # (B,) bool: replace the context
        # set by its null; or name -> (B,) bool per set ("" = the unnamed set)
        attn_mask: Optional[torch.Tensor] = None,  # (N, N) or (B, N, N) bool, True = query may attend to key
        contexts: Optional[dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]]] = None,  # named sets:
        # name -> (context (B, M, Dc), mask (B, M) bool (or 0/1) or None), see ContextSpec
    ) -> dict[str, torch.Tensor]:
        self._check_inputs(x, t)
        B = next(iter(x.values())).shape[0]
        context_drop, named_drop = split_context_drop(context_drop)
        sets = named_contexts(self.context_specs, self.null_contexts, B, contexts, named_drop)
        token_mask, context_mask = self._check_masks(B, token_mask, context, context_mask, context_drop,
                                                     stream_drop, label_drop)
        h = self._embed(x, self.streams, stream_drop, token_mask)  # (B, N, D)
        c, index = self._conditioning(t, labels, label_drop, B)
        mask = None
        if token_mask is not None:
            mask = torch.cat([token_mask[s.name] if s.name in token_mask else
                              torch.ones(B, s.num_tokens, dtype=torch.bool, device=h.device)
                              for s in self.streams], dim=1)  # (B, N) key padding
        if attn_mask is not None:
            mask = combine_masks(mask, attn_mask, B, self.num_tokens)  # (B, N, N)
        rope = (self.rope_cos, self.rope_sin) if self.pos_embed_kind == "rope" else None
        context, context_mask = unnamed_context(context, context_mask, context_drop, self.context_dim,
                                                self.null_context)
        K = self.num_class_tokens
        if K:
            h, mask = self._with_class_tokens(h, labels, label_drop, mask)
        kept: list[torch.Tensor] = []  # long skips: the first blocks' outputs
        spec = self.route if self.training else None  # token routing: training only, every token in eval
        routed = None
        for i, block in enumerate(self.blocks):
            if spec is not None and i == spec.start:
                h, c, index, mask, rope, routed = route(spec, h, c, index, mask, rope)
            if self.long_skips is not None:
                h = self.long_skips.merge(i, h, kept)
            h = self._block_step(i, block, h, c, index, mask, rope, context, context_mask, sets=sets)
            if self.long_skips is not None:
                self.long_skips.keep(i, h, kept)
            if routed is not None and i == spec.end - 1:
                h, c, index, mask, rope = unroute(routed, h)

        return self._outputs(h[:, K:] if K else h, c, index, self.streams, K)

    def _block_step(self, i, block, h, c, index, mask, rope, context, context_mask, **kw):
        """Block ``i`` of forward's loop (ditlab.models.control.ConditionedDiT adds a condition pathway here)."""
        return block(h, c, index, mask, rope, context, context_mask, **kw)

    # ---- shared by forward and prefix caching ---------------------------------------------------
    def _embed(self, x, streams, stream_drop=None, token_mask=None) -> torch.Tensor:
        """Patch / token embeddings (+ positions, dropped conditions -> nulls) of ``streams``, concatenated.
        Tokens masked out by ``token_mask`` (bool) are zeroed before the projection: a NaN there would
        otherwise reach every output (0 attention weight * NaN) and the weight gradients."""
        tokens = []
        for s in streams:
            xs = x[s.name]
            if token_mask is not None and s.name in token_mask:
                keep = token_mask[s.name]  # (B, N_s)
                if s.kind == "image":  # token (row, col) -> its p x p pixels
                    g, p = s.grid, s.patch_size
                    keep = keep.reshape(-1, g, 1, g, 1).expand(-1, g, p, g, p).reshape(-1, 1, g * p, g * p)
                else:
                    keep = keep[..., None]
                xs = torch.where(keep, xs, 0)
            h = self.patch_embed[s.name](xs)  # (B, N_s, D)
            if stream_drop is not None and s.name in stream_drop:
                if s.name not in self.null_tokens:
                    raise ValueError(f"stream {s.name!r} is predicted, not a condition: it cannot be dropped")
                h = torch.where(stream_drop[s.name][:, None, None], self.null_tokens[s.name].to(h.dtype), h)
            if self.pos_embed_kind == "sincos":
                h = h + getattr(self, f"pos_{s.name}").to(h.dtype)
            tokens.append(h)
        return torch.cat(tokens, dim=1) if len(tokens) > 1 else tokens[0]

    @staticmethod
    def _token_index(index: Index, c: torch.Tensor, start: int, end: int) -> Index:
        """Token -> conditioning group for the tokens [start, end) of the sequence (None = broadcast)."""
        if index is not None:
            return slice_groups(index, start, end)
        if c.shape[1] == 1:
            return None
        return torch.arange(start, end, device=c.device)  # one group per token

    def _outputs(self, h, c, index, streams, offset: int) -> dict[str, torch.Tensor]:
        """Final layers of the predicted ``streams``, whose tokens are h's, from sequence position ``offset``."""
        out, start = {}, 0
        for s in streams:
            end = start + s.num_tokens
            if s.predict:
                sl_index = self._token_index(index, c, offset + start, offset + end)
                out[s.name] = unpatchify(self.final[s.name](h[:, start:end], c, sl_index), s)
            start = end
        return out

    # ---- prefix caching: leading condition streams computed once, reused at every sampler step ----
    def split_prefix(self) -> tuple[list[StreamSpec], list[StreamSpec], int]:
        """(leading condition streams, the streams after them, their number of tokens P)."""
        prefix = []
        for s in self.streams:
            if s.predict:
                break
            prefix.append(s)
        rest = self.streams[len(prefix):]
        if not prefix or not rest:
            raise ValueError("prefix caching needs leading condition streams followed by predicted streams; "
                             f"the streams are {[(s.name, s.predict) for s in self.streams]}")
        return prefix, rest, sum(s.num_tokens for s in prefix)

    def _prefix_setup(self, x, t, labels, attn_mask, check_mask: bool):
        if self.context_dim is not None or self.context_specs:
            raise ValueError("prefix caching does not support a model with a context set (cross-attention)")
        if self.num_class_tokens:
            raise ValueError("prefix caching does not support in-context class tokens (model.class_tokens > 0)")
        if attn_mask is None:
            raise ValueError("prefix caching needs an attn_mask in which no prefix token sees a later token")
        self._check_inputs(x, t)
        B = next(iter(x.values())).shape[0]
        prefix, rest, P = self.split_prefix()
        mask = combine_masks(None, attn_mask, B, self.num_tokens)  # (B, N, N)
        if check_mask and mask[:, :P, P:].any():  # once, when the cache is built (a host sync)
            raise ValueError("a prefix token attends to a later token: its keys and values depend on the "
                             "generated tokens and cannot be cached")
        c, index = self._conditioning(t, labels, None, B)
        rope = (self.rope_cos, self.rope_sin) if self.pos_embed_kind == "rope" else None
        return B, prefix, rest, P, mask, c, index, rope

    def prefix_cache(self, x, t, labels=None, attn_mask=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each block's self-attention keys and values of the prefix tokens (``split_prefix``).

        Valid while the prefix streams' inputs and noise levels stay as given here: e.g. the clean
        context of an in-context prompt across all steps of a sampler. Same arguments as forward
        (``x`` and ``t`` hold every stream; the predicted streams' inputs are not read).
        """
        B, prefix, _, P, mask, c, index, rope = self._prefix_setup(x, t, labels, attn_mask, check_mask=True)
        h = self._embed(x, prefix)
        idx = self._token_index(index, c, 0, P)
        rope_p = None if rope is None else (rope[0][:P], rope[1][:P])
        cache, kept = [], []
        for i, block in enumerate(self.blocks):
            if self.long_skips is not None:  # per token: the prefix's skips are its own
                h = self.long_skips.merge(i, h, kept)
            h, kv = block(h, c, idx, mask[:, :P, :P], rope_p, None, None, return_kv=True)
            if self.long_skips is not None:
                self.long_skips.keep(i, h, kept)
            cache.append(kv)
        return cache

    def forward_with_prefix(self, cache, x, t, labels=None, attn_mask=None) -> dict[str, torch.Tensor]:
        """forward() for the tokens after the prefix, reading the prefix from ``cache`` (prefix_cache):
        the same outputs as forward, at the cost of the tokens after the prefix only."""
        B, _, rest, P, mask, c, index, rope = self._prefix_setup(x, t, labels, attn_mask, check_mask=False)
        if len(cache) != len(self.blocks) or tuple(cache[0][0].shape[::2]) != (B, P):
            raise ValueError(f"the prefix cache does not fit: {len(cache)} blocks with keys of shape "
                             f"{tuple(cache[0][0].shape) if cache else ()}; expected {len(self.blocks)} blocks "
                             f"of (B={B}, heads, P={P}, head_dim)")
        h = self._embed(x, rest)
        idx = self._token_index(index, c, P, self.num_tokens)
        rope_q = None if rope is None else (rope[0][P:], rope[1][P:])
        kept = []
        for i, (block, kv) in enumerate(zip(self.blocks, cache)):
            if self.long_skips is not None:
                h = self.long_skips.merge(i, h, kept)
            h = block(h, c, idx, mask[:, P:, :], rope_q, None, None, kv_prefix=kv)
            if self.long_skips is not None:
                self.long_skips.keep(i, h, kept)
        return self._outputs(h, c, index, rest, P)


def build_dit(model_cfg, streams: list[StreamSpec], context_dim: Optional[int] = None,
              contexts: Optional[list[ContextSpec]] = None) -> DiT:
    """DiT from a ModelConfig (ditlab.config); the size comes from model.arch unless overridden.
    ``context_dim``: the unnamed context set; ``contexts``: named ones (see context_specs_of)."""
    return DiT(streams=streams, context_dim=context_dim, contexts=contexts, **dit_kwargs(model_cfg))


def dit_kwargs(model_cfg) -> dict:
    """DiT's keyword arguments from a ModelConfig, all but the streams and the context sets: the size
    (model.arch unless overridden) and every architecture option. A config object without the newer
    keys (one built by hand) gets their defaults, today's network."""
    hidden, depth, heads, _ = parse_arch(model_cfg.arch)
    return dict(
        hidden_size=model_cfg.hidden_size or hidden,
        depth=model_cfg.depth or depth,
        num_heads=model_cfg.num_heads or heads,
        mlp_ratio=model_cfg.mlp_ratio,
        num_classes=model_cfg.num_classes,
        pos_embed=model_cfg.pos_embed,
        attn_dropout=model_cfg.attn_dropout,
        qk_norm=model_cfg.qk_norm,
        cross_attn_dropout=model_cfg.cross_attn_dropout,
        output_init=model_cfg.output_init,
        mlp=getattr(model_cfg, "mlp", "gelu"),
        norm=getattr(model_cfg, "norm", "layernorm"),
        long_skips=getattr(model_cfg, "long_skips", False),
        class_tokens=getattr(model_cfg, "class_tokens", 0),
        label_in_adaln=getattr(model_cfg, "label_in_adaln", True),
        route_fraction=getattr(model_cfg, "route_fraction", 0.0),
        route_blocks=getattr(model_cfg, "route_blocks", ""),
    )

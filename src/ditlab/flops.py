"""Exact forward FLOPs of a DiT, for throughput and MFU reports.

Per block, over the T tokens of the self-attention sequence (the streams' tokens plus any in-context
class tokens): qkv + proj 4 T D^2 MACs, the MLP 2 T D H (GELU, hidden H = mlp_ratio D: 8 T D^2 at ratio 4)
or 3 T D H (SwiGLU: gate, value and output matrices), attention scores and values 2 T^2 D, adaLN
modulation 6 D^2 per conditioning group (one per sample when t is per sample). U-ViT long skips add
one 2D -> D projection per token for each of the depth // 2 receiving blocks. A tokens_gated condition
(ditlab.models.control) adds, per gated block, a second attention over the T - Nc keys other than the
condition's (2 Q (T - Nc) D, Q = T - Nc queries when those keys are one range and the pass runs on slices,
all T when it gathers them) and a second output projection (T D^2). Token routing in training
(ditlab.models.routing) runs its span of blocks on the kept tokens only.
FLOPs = 2 x MACs; a training step costs 3 x the forward (forward + backward of activations and
weights).
"""
from __future__ import annotations

from ditlab.models.dit import DiT
from ditlab.models.mlp import SwiGLU
from ditlab.models.routing import kept_count


def dit_forward_flops(model: DiT, groups: int = 1, context_tokens: int = 0, routed: bool = False) -> int:
    """Forward FLOPs per sample.

    ``groups``: the streams' conditioning groups per sample (1 for one stream with per-sample t, the
    number of streams for several, the number of tokens for per-token t); the class tokens' own group
    (model.class_tokens > 0) is added here: one more, or one per class token when t is per token.
    ``context_tokens``: the context set length seen by cross-attention (padding included: SDPA computes it).
    ``routed``: a training forward, whose routed blocks (model.route_fraction, ditlab.models.routing) see only
    the kept tokens; sampling runs every token through every block.
    """
    D, L = model.hidden_size, model.depth
    K = getattr(model, "num_class_tokens", 0)
    T = model.num_tokens + K  # the self-attention sequence
    if K:
        groups += K if groups >= model.num_tokens > 1 else 1
    mlp = model.blocks[0].mlp
    H = mlp.hidden
    mlp_factor = 3 if isinstance(mlp, SwiGLU) else 2
    num_mod = model.blocks[0].num_mod

    def block_macs(T: int, groups: int) -> int:
        macs = 4 * T * D * D + mlp_factor * T * D * H + 2 * T * T * D + groups * num_mod * D * D
        if model.context_dim is not None:  # cross-attention: q and out projections, k/v of the context, scores
            M, Dc = context_tokens, model.context_dim
            macs += 2 * T * D * D + 2 * M * Dc * D + 2 * T * M * D
        return macs

    spec = getattr(model, "route", None) if routed else None
    if spec is None:
        macs = L * block_macs(T, groups)
    else:  # the span's blocks see the kept tokens, with per-token conditioning rows unless there is one group
        Tr, span = kept_count(T, spec.fraction), spec.end - spec.start
        macs = (L - span) * block_macs(T, groups) + span * block_macs(Tr, 1 if groups == 1 else Tr)
    gates = getattr(model, "token_gates", None)
    if gates is not None:
        Nc = model.cond_spec.num_tokens
        queries = T - Nc if getattr(model, "cond_keep_range", None) is not None else T
        macs += len(gates) * (2 * queries * (T - Nc) * D + T * D * D)
    if getattr(model, "long_skips", None) is not None:
        macs += (L // 2) * T * 2 * D * D
    for s in model.streams:
        pixels = s.patch_size * s.patch_size * s.channels
        macs += s.num_tokens * pixels * D  # patch embedding
        if s.predict:
            macs += s.num_tokens * D * pixels + groups * 2 * D * D  # unembedding + final adaLN
    macs += 256 * D + D * D  # timestep MLP
    return 2 * macs


def train_flops_per_image(model: DiT) -> int:
    return 3 * dit_forward_flops(model, routed=True)

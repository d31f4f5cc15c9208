"""Exact forward FLOPs of a DiT, for throughput and MFU reports.

Per block: qkv + proj + MLP = 12 T D^2 MACs (mlp_ratio 4), attention scores and values 2 T^2 D,
adaLN modulation 6 D^2 per conditioning group (one per sample when t is per sample).
FLOPs = 2 x MACs; a training step costs 3 x the forward (forward + backward of activations and
weights).
"""
from __future__ import annotations

from ditlab.models.dit import DiT


def dit_forward_flops(model: DiT, groups: int = 1, context_tokens: int = 0) -> int:
    """Forward FLOPs per sample.

    ``groups``: conditioning groups per sample (1 for one stream with per-sample t, the number of
    streams for several, the number of tokens for per-token t). ``context_tokens``: the context set
    length seen by cross-attention (padding included: SDPA computes it).
    """
    D, L = model.hidden_size, model.depth
    T = model.num_tokens
    mlp_hidden = model.blocks[0].mlp.fc1.out_features
    attn_proj = 4 * T * D * D
    mlp = 2 * T * D * mlp_hidden
    scores = 2 * T * T * D
    mod = groups * model.blocks[0].num_mod * D * D
    macs = L * (attn_proj + mlp + scores + mod)
    if model.context_dim is not None:  # cross-attention: q and out projections, k/v of the context, scores
        M, Dc = context_tokens, model.context_dim
        macs += L * (2 * T * D * D + 2 * M * Dc * D + 2 * T * M * D)
    for s in model.streams:
        pixels = s.patch_size * s.patch_size * s.channels
        macs += s.num_tokens * pixels * D  # patch embedding
        if s.predict:
            macs += s.num_tokens * D * pixels + groups * 2 * D * D  # unembedding + final adaLN
    macs += 256 * D + D * D  # timestep MLP
    return 2 * macs


def train_flops_per_image(model: DiT) -> int:
    return 3 * dit_forward_flops(model)

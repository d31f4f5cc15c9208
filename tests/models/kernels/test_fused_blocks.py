"""DiTBlock / FinalLayer with the fused path (train.fast_kernels) against today's path, and the named
modulation chunks (issue 15 item 7) pinned to the checkpoint's chunk order."""
from __future__ import annotations

import pytest
import torch

from ditlab.models import kernels
from ditlab.models.dit import AdaLNMods, ContextSpec, DiT, DiTBlock, StreamSpec, modulate

IMG = StreamSpec("image", 3, 8, 2)
COND = StreamSpec("cond", 3, 4, 2, predict=False, pos_scale=2.0)
gpu = pytest.mark.skipif(not kernels.triton_available(), reason="needs a CUDA GPU and Triton")


def tiny(streams, hidden=32, heads=4, noise=0.2, injection=None, **kw):
    torch.manual_seed(0)
    if injection:  # a condition pathway of ditlab.models.control (its gates perturbed open too)
        from ditlab.models.control import ConditionedDiT

        model = ConditionedDiT(streams, COND.name, injection, hidden_size=hidden, depth=2, num_heads=heads, **kw)
    else:
        model = DiT(streams, hidden_size=hidden, depth=2, num_heads=heads, **kw)
    with torch.no_grad():  # adaLN-Zero starts as the identity: perturb every weight
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model


def inputs(streams, batch=2, per_token=False, context_dim=None, labels=False, named=False, device="cpu"):
    g = torch.Generator().manual_seed(1)
    x = {s.name: torch.randn(batch, *s.shape, generator=g) for s in streams}
    if per_token:
        t = {s.name: torch.rand(batch, s.num_tokens, generator=g) for s in streams}
    else:
        t = {s.name: torch.rand(batch, generator=g) for s in streams}
    kw = {}
    if labels:
        kw["labels"] = torch.arange(batch) % 5
    if context_dim:
        kw["context"] = torch.randn(batch, 5, context_dim, generator=g)
        kw["context_mask"] = torch.arange(5)[None] < torch.tensor([[5], [3]])[:batch]
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    x, t, kw = move(x), move(t), move(kw)
    if named:  # the two named sets of CASES["named_sets"]: one padded, one full length (no mask)
        text_mask = torch.arange(6)[None] < torch.tensor([[6], [2]])[:batch]
        kw["contexts"] = {"text": (torch.randn(batch, 6, 4, generator=g).to(device), text_mask.to(device)),
                          "pc": (torch.randn(batch, 7, 3, generator=g).to(device), None)}
        kw["context_drop"] = {"pc": torch.tensor([True, False])[:batch].to(device)}
        if context_dim:
            kw["context_drop"][""] = torch.tensor([False, True])[:batch].to(device)
    return x, t, kw


def old_block_forward(block, x, c, index, mask, rope, context, context_mask):
    """DiTBlock.forward as it was before the chunks were named (mods[0..8]): the pinned layout."""
    mod = block.adaLN(c)
    if index is not None:
        mod = mod[:, index]
    mods = mod.chunk(block.num_mod, dim=-1)
    a = block.attn(modulate(block.norm1(x), mods[0], mods[1]), mask=mask, rope=rope)
    x = x + mods[2] * a
    if block.has_cross:
        h = modulate(block.norm_cross(x), mods[6], mods[7])
        x = x + mods[8] * block.cross_attn(h, context=context, mask=context_mask)
    return x + mods[5] * block.mlp(modulate(block.norm2(x), mods[3], mods[4]))


@pytest.mark.parametrize("cross", [False, True])
def test_named_chunks_keep_the_checkpoint_order(cross):
    torch.manual_seed(0)
    block = DiTBlock(32, 4, 4.0, 0.0, False, context_dim=6 if cross else None)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    keys = [k for k in block.state_dict()]
    expected = ["attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias"]
    if cross:
        expected += ["cross_attn.q.weight", "cross_attn.q.bias", "cross_attn.kv.weight", "cross_attn.kv.bias",
                     "cross_attn.proj.weight", "cross_attn.proj.bias"]
    expected += ["mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "adaLN.weight", "adaLN.bias"]
    assert keys == expected
    assert block.adaLN.weight.shape == ((9 if cross else 6) * 32, 32)
    x, c = torch.randn(2, 10, 32), torch.randn(2, 1, 32)
    ctx = torch.randn(2, 5, 6) if cross else None
    out = block(x, c, None, None, None, ctx, None)
    assert torch.equal(out, old_block_forward(block, x, c, None, None, None, ctx, None))
    index = torch.tensor([0] * 4 + [1] * 6)
    c2 = torch.randn(2, 2, 32)
    assert torch.equal(block(x, c2, index, None, None, ctx, None),
                       old_block_forward(block, x, c2, index, None, None, ctx, None))
    names = AdaLNMods._fields
    assert names == ("shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp", "gate_mlp",
                     "shift_ca", "scale_ca", "gate_ca")


CASES = {
    "image": (dict(streams=[IMG], num_classes=5), dict(labels=True)),
    "superres": (dict(streams=[COND, IMG]), {}),
    "per_token": (dict(streams=[COND, IMG]), dict(per_token=True)),
    "context": (dict(streams=[IMG], context_dim=6), dict(context_dim=6)),
    "tokens_gated": (dict(streams=[COND, IMG], injection="tokens_gated"), {}),  # two attention passes a block
    # the unnamed set and two named ones (one in block 1 only), dropped rows included
    "named_sets": (dict(streams=[IMG], context_dim=6, contexts=[ContextSpec("text", 4), ContextSpec("pc", 3, blocks="1:2")]),
                   dict(context_dim=6, named=True)),
    # named sets alone (no unnamed set: the self-attention's gate feeds the first set), over two streams
    # (token -> group index) and over per-token noise levels (one group per token)
    "named_two_streams": (dict(streams=[COND, IMG], contexts=[ContextSpec("text", 4), ContextSpec("pc", 3)]),
                          dict(named=True)),
    "named_per_token": (dict(streams=[COND, IMG], contexts=[ContextSpec("text", 4), ContextSpec("pc", 3)]),
                        dict(named=True, per_token=True)),
    # the speedrun's architecture variants, which its combination may train on the fused path (fast_path):
    # in-context class tokens (one more token group), RoPE + qk-norm, U-ViT long skips, and token routing
    # (the routed span's blocks see the kept tokens with per-token modulation rows; the draw is seeded)
    "class_tokens_rope": (dict(streams=[IMG], num_classes=5, class_tokens=2, pos_embed="rope", qk_norm=True),
                          dict(labels=True)),
    "long_skips": (dict(streams=[IMG], num_classes=5, long_skips=True), dict(labels=True)),
    # the combination of the speedrun's final stage: SwiGLU (its own module between the kernels) + long skips
    "swiglu_long_skips": (dict(streams=[IMG], num_classes=5, mlp="swiglu", long_skips=True), dict(labels=True)),
    "routed": (dict(streams=[IMG], num_classes=5, class_tokens=2, route_fraction=0.5, route_blocks="1:2"),
               dict(labels=True)),
}


def run_model(model, x, t, kw):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the same routed tokens (model.route_fraction) on both paths
    out = model(x, t, **kw)["image"]
    (out.float() * torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_path_on_cpu_is_todays_mathematics(case):
    """On the CPU the fused path takes the reference kernels: same outputs and gradients as 'off'."""
    mkw, ikw = CASES[case]
    model = tiny(**mkw)
    x, t, kw = inputs(mkw["streams"], **ikw)
    off, g_off = run_model(model, x, t, kw)
    assert kernels.set_fast_kernels(model, True) == 2 + len(model.final)
    on, g_on = run_model(model, x, t, kw)
    torch.testing.assert_close(on, off, rtol=1e-6, atol=1e-6)
    assert g_on.keys() == g_off.keys()
    for name in g_off:
        torch.testing.assert_close(g_on[name], g_off[name], rtol=1e-5, atol=1e-6, msg=name)


def test_configure_fast_kernels_modes():
    model = tiny([IMG])
    assert kernels.configure_fast_kernels(model, "off", "cpu") is False
    assert kernels.configure_fast_kernels(model, "auto", "cpu") is False
    assert not any(getattr(m, "fast_kernels", False) for m in model.modules())
    with pytest.raises(RuntimeError, match="train.fast_kernels=on"):
        kernels.configure_fast_kernels(model, "on", "cpu")
    with pytest.raises(ValueError, match="train.fast_kernels"):
        kernels.resolve_fast_kernels("yes", "cpu")
    assert "fast_kernels" not in "".join(model.state_dict())  # not part of checkpoints


@gpu
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_path_matches_eager_on_gpu(case, amp):
    mkw, ikw = CASES[case]
    # Weights perturbed mildly: with 0.2 at D = 384 the net is so ill-conditioned that fp32 rounding
    # differences (1e-7) grow to 1e-3 in the gradients (seen through the Triton interpreter on the CPU).
    model = tiny(hidden=384, heads=6, noise=0.02, **mkw).cuda()
    x, t, kw = inputs(mkw["streams"], device="cuda", **ikw)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp)
    with ctx:
        off, g_off = run_model(model, x, t, kw)
    kernels.set_fast_kernels(model, True)
    with ctx:
        on, g_on = run_model(model, x, t, kw)
    tol = 5e-2 if amp else 1e-4

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()

    assert rel(on, off) < tol
    for name in g_off:
        assert rel(g_on[name], g_off[name]) < tol, (name, rel(g_on[name], g_off[name]))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
@pytest.mark.parametrize("per_token", [False, True])
def test_fused_path_prefix_cache(device, per_token):
    """Prefix caching through the fused path (sliced token -> group index; per-token groups gathered)."""
    model = tiny([COND, IMG], pos_embed="rope", noise=0.02).to(device).eval()
    kernels.set_fast_kernels(model, True)
    P, N = COND.num_tokens, COND.num_tokens + IMG.num_tokens
    mask = torch.ones(N, N, dtype=torch.bool, device=device)
    mask[:P, P:] = False
    x, t, _ = inputs([COND, IMG], per_token=per_token, device=device)
    with torch.no_grad():
        full = model(x, t, attn_mask=mask)["image"]
        cache = model.prefix_cache(x, t, attn_mask=mask)
        cached = model.forward_with_prefix(cache, x, t, attn_mask=mask)["image"]
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_blocks_with_named_sets_take_the_fused_path(monkeypatch):
    """A block that cross-attends to named sets runs fused too (it used to fall back to the eager path): one
    fused gate + residual + LayerNorm per sub-layer boundary, each named set's own adaLN chunks included."""
    mkw, ikw = CASES["named_sets"]
    model = tiny(**mkw)
    x, t, kw = inputs(mkw["streams"], **ikw)
    kernels.set_fast_kernels(model, True)
    calls = []
    real = kernels.gate_residual_adaln
    monkeypatch.setattr(kernels, "gate_residual_adaln", lambda *a, **k: calls.append(1) or real(*a, **k))
    model(x, t, **kw)
    # block 0: unnamed cross, text, MLP; block 1: unnamed cross, text, pc, MLP
    assert len(calls) == 3 + 4

"""Architecture options of the DiT backbone (issue 18; docs/architecture_options.md): model.mlp, model.norm,
model.long_skips, model.class_tokens, model.label_in_adaln. Every option off is today's network."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ditlab.config import ModelConfig, load_config
from ditlab.configlib import ConfigError
from ditlab.flops import dit_forward_flops
from ditlab.models import kernels
from ditlab.models.control import ConditionedDiT
from ditlab.models.dit import DiT, StreamSpec, build_dit
from ditlab.models.mlp import Mlp, SwiGLU, swiglu_hidden
from ditlab.models.norms import RMSNorm
from ditlab.tasks.icl.layout import Y_QUERY, icl_streams, prefix_attention_mask

IMG = StreamSpec("image", 3, 8, 2)  # 16 tokens
COND = StreamSpec("cond", 3, 4, 2, predict=False, pos_scale=2.0)  # 4 tokens, a superres-like condition
DEFAULTS = dict(mlp="gelu", norm="layernorm", long_skips=False, class_tokens=0, label_in_adaln=True)


def build(streams=(COND, IMG), seed=0, depth=2, perturb=True, **kw):
    torch.manual_seed(seed)
    kw.setdefault("num_classes", 5)
    model = DiT(list(streams), hidden_size=32, depth=depth, num_heads=4, **kw)
    if perturb:  # adaLN-Zero starts as the identity: perturb to a non-trivial network
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def inputs(B=2, seed=1, per_token=False):
    g = torch.Generator().manual_seed(seed)
    x = {"image": torch.randn(B, 3, 8, 8, generator=g), "cond": torch.randn(B, 3, 4, 4, generator=g)}
    ti = torch.rand(B, 16, generator=g) if per_token else torch.rand(B, generator=g)
    t = {"image": ti, "cond": torch.zeros(B)}
    return x, t, torch.arange(B) % 5


# ---- defaults: today's network ---------------------------------------------------------------------
def test_explicit_defaults_are_todays_network():
    a, b = build(), build(**DEFAULTS)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(k.startswith(("long_skips", "class_tokens")) or ".mlp.gate_value" in k for k in sa)
    x, t, y = inputs()
    assert torch.equal(a(x, t, labels=y)["image"], b(x, t, labels=y)["image"])


def test_build_dit_reads_every_option_and_a_config_without_them_gets_the_defaults():
    cfg = ModelConfig(arch="DiT-S/2", hidden_size=32, depth=3, num_heads=4, num_classes=5, mlp="swiglu",
                      norm="rmsnorm", long_skips=True, class_tokens=2, label_in_adaln=False)
    m = build_dit(cfg, [IMG])
    assert (m.mlp_kind, m.norm_kind, m.num_class_tokens, m.label_in_adaln) == ("swiglu", "rmsnorm", 2, False)
    assert m.long_skips is not None and isinstance(m.blocks[0].mlp, SwiGLU)

    class OldConfig:  # a model config object from before the options (e.g. built by hand)
        arch, hidden_size, depth, num_heads, mlp_ratio, num_classes = "DiT-S/2", 32, 2, 4, 4.0, 5
        pos_embed, attn_dropout, qk_norm, cross_attn_dropout, output_init = "sincos", 0.0, False, 0.0, "zero"

    torch.manual_seed(0)
    old = build_dit(OldConfig, [IMG])
    torch.manual_seed(0)
    new = build_dit(ModelConfig(hidden_size=32, depth=2, num_heads=4, num_classes=5), [IMG])
    assert all(torch.equal(p, q) for p, q in zip(old.state_dict().values(), new.state_dict().values()))


# ---- model.mlp=swiglu -------------------------------------------------------------------------------
def test_swiglu_hidden_width_and_parameter_count():
    assert [swiglu_hidden(d, 4.0) for d in (384, 768, 1024, 1152)] == [1024, 2048, 2728, 3072]
    assert swiglu_hidden(32, 4.0) == 88 and swiglu_hidden(100, 4.0) % 8 == 0
    for d in (384, 768, 1152):
        gelu = sum(p.numel() for p in Mlp(d, 4 * d).parameters())
        swiglu = sum(p.numel() for p in SwiGLU(d, swiglu_hidden(d, 4.0)).parameters())
        assert abs(swiglu - gelu) / gelu < 0.001


def test_swiglu_block_computes_silu_gate_times_value():
    m = build(mlp="swiglu")
    mlp = m.blocks[0].mlp
    assert isinstance(mlp, SwiGLU) and mlp.hidden == 88
    assert tuple(mlp.gate_value.weight.shape) == (176, 32) and tuple(mlp.out.weight.shape) == (32, 88)
    x = torch.randn(3, 32)
    w1, w2 = mlp.gate_value.weight[:88], mlp.gate_value.weight[88:]
    b1, b2 = mlp.gate_value.bias[:88], mlp.gate_value.bias[88:]
    expected = (F.silu(x @ w1.T + b1) * (x @ w2.T + b2)) @ mlp.out.weight.T + mlp.out.bias
    torch.testing.assert_close(mlp(x), expected)
    xx, t, y = inputs()
    assert m(xx, t, labels=y)["image"].shape == (2, 3, 8, 8)
    assert not torch.allclose(m(xx, t, labels=y)["image"], build()(xx, t, labels=y)["image"], atol=1e-3)


def test_swiglu_halves_are_initialised_as_two_layers():
    m = build(mlp="swiglu", perturb=False)
    D, H = 32, 88
    two_layers, fused = math.sqrt(6 / (D + H)), math.sqrt(6 / (D + 2 * H))
    for half in m.blocks[0].mlp.gate_value.weight.chunk(2):
        assert fused * 1.05 < half.abs().max() <= two_layers  # xavier of a D -> H layer, not of D -> 2H
    assert torch.count_nonzero(m.blocks[0].mlp.gate_value.bias) == 0


# ---- model.norm=rmsnorm -----------------------------------------------------------------------------
def test_rmsnorm_everywhere_before_modulation_and_same_parameters():
    m = build(norm="rmsnorm", context_dim=6)
    norms = [m.blocks[0].norm1, m.blocks[0].norm2, m.blocks[0].norm_cross, m.final["image"].norm]
    assert all(isinstance(n, RMSNorm) for n in norms)
    ref = build(context_dim=6)
    assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    x = torch.randn(2, 5, 32) * 3 + 1
    torch.testing.assert_close(norms[0](x), x / x.square().mean(-1, keepdim=True).add(1e-6).sqrt())
    centred = x - x.mean(-1, keepdim=True)  # without a mean RMSNorm and LayerNorm agree
    torch.testing.assert_close(norms[0](centred), ref.blocks[0].norm1(centred), atol=1e-5, rtol=1e-5)
    xx, t, y = inputs()
    kw = dict(labels=y, context=torch.randn(2, 3, 6))
    assert not torch.allclose(m(xx, t, **kw)["image"], ref(xx, t, **kw)["image"], atol=1e-3)


def test_rmsnorm_reaches_named_context_sets():
    from ditlab.models.dit import ContextSpec

    m = build(norm="rmsnorm", contexts=[ContextSpec("text", 6)])
    assert isinstance(m.blocks[1].cross_sets["text"].norm, RMSNorm)


# ---- model.long_skips -------------------------------------------------------------------------------
@pytest.mark.parametrize("depth,sources", [(4, {2: 1, 3: 0}), (5, {3: 1, 4: 0}), (1, {})])
def test_long_skip_wiring(depth, sources):
    m = build(depth=depth, long_skips=True)
    assert len(m.long_skips.proj) == depth // 2
    assert {i: m.long_skips.source(i) for i in range(depth) if m.long_skips.source(i) is not None} == sources
    assert tuple(m.long_skips.proj[0].weight.shape if depth > 1 else (32, 64)) == (32, 64)
    if not sources:
        return
    # Make every projection the pure skip [0, I]: block i's input is then exactly its source's output.
    with torch.no_grad():
        for p in m.long_skips.proj:
            p.weight.zero_()
            p.bias.zero_()
            p.weight[:, 32:].copy_(torch.eye(32))
    seen_in, seen_out = {}, {}
    hooks = [b.register_forward_pre_hook(lambda mod, args, i=i: seen_in.__setitem__(i, args[0])) for i, b in
             enumerate(m.blocks)]
    hooks += [b.register_forward_hook(lambda mod, args, out, i=i: seen_out.__setitem__(i, out)) for i, b in
              enumerate(m.blocks)]
    x, t, y = inputs()
    m(x, t, labels=y)
    for h in hooks:
        h.remove()
    for i, src in sources.items():
        assert torch.equal(seen_in[i], seen_out[src])
    if depth % 2:  # the middle block has no skip: its input is the previous block's output
        assert torch.equal(seen_in[depth // 2], seen_out[depth // 2 - 1])


@pytest.mark.parametrize("depth", [4, 5])
def test_long_skips_start_as_the_network_without_them(depth):
    """[I, 0] projections draw no random numbers: same seed, same other weights; and with the blocks made
    non-trivial (identically in both), the outputs are equal. Moving the skip half changes them."""
    torch.manual_seed(0)
    plain = DiT([COND, IMG], hidden_size=32, depth=depth, num_heads=4, num_classes=5)
    torch.manual_seed(0)
    skips = DiT([COND, IMG], hidden_size=32, depth=depth, num_heads=4, num_classes=5, long_skips=True)
    sp, ss = plain.state_dict(), skips.state_dict()
    assert set(ss) - set(sp) == {f"long_skips.proj.{k}.{w}" for k in range(depth // 2) for w in ("weight", "bias")}
    assert all(torch.equal(sp[k], ss[k]) for k in sp)
    w = ss["long_skips.proj.0.weight"]
    assert torch.equal(w[:, :32], torch.eye(32)) and torch.count_nonzero(w[:, 32:]) == 0
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            delta = 0.2 * torch.randn(p.shape, generator=g)
            p.add_(delta)
            skips.get_parameter(name).add_(delta)
    x, t, y = inputs()
    a, b = plain(x, t, labels=y)["image"], skips(x, t, labels=y)["image"]
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    b.square().sum().backward()
    assert skips.long_skips.proj[0].weight.grad[:, 32:].abs().sum() > 0  # the skip half learns from step 0
    with torch.no_grad():
        skips.long_skips.proj[0].weight[:, 32:] += 0.1 * torch.randn(32, 32, generator=g)
    assert not torch.allclose(a, skips(x, t, labels=y)["image"], atol=1e-4)


def test_long_skips_work_with_prefix_caching():
    torch.manual_seed(0)
    model = build(icl_streams(3, 5), depth=3, long_skips=True, num_classes=0)
    x = {"x": torch.randn(2, 5, 3), "y_ctx": torch.randn(2, 5, 1), "y_query": torch.randn(2, 5, 1)}
    t = {"x": torch.zeros(2), "y_ctx": torch.zeros(2), "y_query": torch.rand(2)}
    mask = prefix_attention_mask(5)
    with torch.no_grad():
        full = model(x, t, attn_mask=mask)[Y_QUERY]
        cached = model.forward_with_prefix(model.prefix_cache(x, t, attn_mask=mask), x, t, attn_mask=mask)[Y_QUERY]
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


# ---- model.class_tokens / model.label_in_adaln ------------------------------------------------------
def test_class_tokens_parameters_and_output_shapes():
    m = build(class_tokens=3)
    sd = m.state_dict()
    assert tuple(sd["class_tokens.pos"].shape) == (3, 32)
    assert set(sd) - set(build().state_dict()) == {"class_tokens.pos"}
    x, t, y = inputs()
    out = m(x, t, labels=y)
    assert set(out) == {"image"} and out["image"].shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="num_classes"):
        build(class_tokens=2, num_classes=0)
    with pytest.raises(ValueError, match="label_in_adaln"):
        build(label_in_adaln=False)


def test_class_tokens_enter_attention_and_are_not_output():
    """The tokens reach the sequence (their offsets change the output) and are cut before the output layer."""
    seen = {}
    m = build(class_tokens=2)
    hook = m.blocks[0].attn.register_forward_pre_hook(lambda mod, args: seen.__setitem__("n", args[0].shape[1]))
    x, t, y = inputs()
    a = m(x, t, labels=y)["image"]
    hook.remove()
    assert seen["n"] == 2 + 4 + 16
    with torch.no_grad():  # random: a constant shift of every channel would be removed by the LayerNorms
        m.class_tokens.pos.add_(torch.randn(2, 32, generator=torch.Generator().manual_seed(5)))
    assert not torch.allclose(a, m(x, t, labels=y)["image"], atol=1e-4)


@pytest.mark.parametrize("in_adaln", [True, False])
def test_class_tokens_cfg_null_label(in_adaln):
    m = build(class_tokens=2, label_in_adaln=in_adaln)
    x, t, y = inputs()
    null = torch.full_like(y, m.label_embed.null_label)
    dropped = m(x, t, labels=y, label_drop=torch.tensor([True, False]))["image"]
    torch.testing.assert_close(dropped[0], m(x, t, labels=null)["image"][0])
    torch.testing.assert_close(dropped[1], m(x, t, labels=y)["image"][1])
    assert not torch.allclose(dropped[0], m(x, t, labels=y)["image"][0], atol=1e-4)


def test_label_only_in_tokens_when_not_in_adaln():
    m = build(class_tokens=2, label_in_adaln=False)
    x, t, y = inputs()
    c1, _ = m._conditioning(t, y, None, 2)
    c2, _ = m._conditioning(t, (y + 1) % 5, None, 2)
    assert torch.equal(c1, c2)  # adaLN sees t only
    assert not torch.allclose(m(x, t, labels=y)["image"], m(x, t, labels=(y + 1) % 5)["image"], atol=1e-4)
    with pytest.raises(ValueError, match="class-conditional"):
        m(x, t)


def test_class_tokens_are_clean_tokens_of_their_own_group():
    """Per-token t equal to per-sample t gives the same output (the class tokens' t = 0 group in both)."""
    m = build(class_tokens=2)
    x, t, y = inputs()
    per_token = {"image": t["image"][:, None].expand(2, 16).clone(), "cond": torch.zeros(2, 4)}
    torch.testing.assert_close(m(x, t, labels=y)["image"], m(x, per_token, labels=y)["image"], atol=1e-5, rtol=1e-5)
    c, index = m._conditioning(t, y, None, 2)
    assert c.shape[1] == 3 and index.index.tolist() == [0, 0] + [1] * 4 + [2] * 16
    assert index.runs == ((0, 0, 2), (1, 2, 6), (2, 6, 22))  # the same map as runs of consecutive tokens
    torch.testing.assert_close(c[:, 0], F.silu(m.t_embed(torch.zeros(2)) + m.label_embed(y)))


@pytest.mark.parametrize("pos", ["sincos", "rope"])
def test_class_tokens_keep_condition_padding_invariance(pos):
    m = build(class_tokens=2, pos_embed=pos)
    x, t, y = inputs(per_token=True)
    mask = {"cond": torch.tensor([[True, True, False, False], [True, True, True, True]])}
    a = m(x, t, labels=y, token_mask=mask)["image"]
    x2 = dict(x, cond=x["cond"].clone())
    x2["cond"][0, :, 2:, :] = 50.0  # sample 0's masked patches
    b = m(x2, t, labels=y, token_mask=mask)["image"]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, m(x2, t, labels=y)["image"], atol=1e-3)  # the test can fail


def test_class_tokens_relay_nothing_across_an_attention_mask():
    """Under attn_mask the class tokens see only each other, so a key hidden from every query stays hidden
    (were they to read it, the next block's queries would receive it through them)."""
    a_s = StreamSpec("a", 3, 4, kind="tokens", positions="index", predict=False)
    b_s = StreamSpec("b", 2, 4, kind="tokens", positions="index")
    m = build([a_s, b_s], depth=3, class_tokens=2)
    g = torch.Generator().manual_seed(1)
    x = {"a": torch.randn(2, 4, 3, generator=g), "b": torch.randn(2, 4, 2, generator=g)}
    t, y = {"a": torch.zeros(2), "b": torch.rand(2, generator=g)}, torch.tensor([1, 3])
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[:, 1] = False
    x2 = dict(x, a=x["a"].clone())
    x2["a"][:, 1] += 5.0
    torch.testing.assert_close(m(x, t, labels=y, attn_mask=mask)["b"], m(x2, t, labels=y, attn_mask=mask)["b"])
    assert not torch.allclose(m(x, t, labels=y)["b"], m(x2, t, labels=y)["b"])
    with pytest.raises(ValueError, match="class tokens"):
        m.prefix_cache(x, t, labels=y, attn_mask=torch.ones(8, 8, dtype=torch.bool).tril())


def test_class_tokens_with_a_dropped_condition_stream_and_superres_injections():
    m = build(class_tokens=2, long_skips=True)
    x, t, y = inputs()
    drop = {"cond": torch.tensor([True, False])}
    out = m(x, t, labels=y, stream_drop=drop)["image"]
    assert torch.isfinite(out).all()
    for injection in ("tokens", "tokens_gated", "cross", "branch", "adaln"):
        torch.manual_seed(0)
        c = ConditionedDiT([COND, IMG], "cond", injection, hidden_size=32, depth=3, num_heads=4, num_classes=5,
                           class_tokens=2, label_in_adaln=False, long_skips=True, mlp="swiglu", norm="rmsnorm")
        assert all(isinstance(b.mlp, SwiGLU) and isinstance(b.norm1, RMSNorm) for b in c.blocks)
        assert c(x, t, labels=y, stream_drop=drop)["image"].shape == (2, 3, 8, 8)
        assert torch.isfinite(c(x, t, labels=y, cond_scale=0.5)["image"]).all()  # tokens: a logit bias
        assert torch.isfinite(c(x, t, labels=y, cond_scale=0.0)["image"]).all()


# ---- FLOPs -----------------------------------------------------------------------------------------
def test_flops_hand_count_swiglu_skips_class_tokens():
    m = build([IMG], depth=3, mlp="swiglu", long_skips=True, class_tokens=2)
    D, L, N, K, H = 32, 3, 16, 2, 88
    T, G = N + K, 2  # the sequence; the image's group and the class tokens'
    block = 4 * T * D * D + 3 * T * D * H + 2 * T * T * D + G * 6 * D * D
    skips = (L // 2) * T * 2 * D * D
    io = N * 12 * D + N * D * 12 + G * 2 * D * D  # patch embedding, unembedding, final adaLN
    assert dit_forward_flops(m) == 2 * (L * block + skips + io + 256 * D + D * D) == 1_677_824
    plain = build([IMG], depth=3)
    assert dit_forward_flops(plain) == 2 * (L * (4 * N * D * D + 2 * N * D * 128 + 2 * N * N * D + 6 * D * D)
                                            + N * 12 * D * 2 + 2 * D * D + 256 * D + D * D)


def test_flops_match_torchs_counter():
    """torch's count of the matmuls for one sample, plus the attention (scores and values, which CPU SDPA's
    math path does not report), less the timestep MLP's second group (torch runs it once per conditioning
    group, the formula counts it once: the class tokens' group)."""
    from torch.utils.flop_counter import FlopCounterMode

    m = build([IMG], depth=3, mlp="swiglu", long_skips=True, class_tokens=2)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        m({"image": torch.randn(1, 3, 8, 8)}, {"image": torch.rand(1)}, labels=torch.tensor([1]))
    counts = counter.get_flop_counts()["Global"]
    matmuls = sum(v for k, v in counts.items() if "attention" not in str(k))
    T, D, L = 18, 32, 3
    attention = 2 * L * 2 * T * T * D
    assert matmuls + attention - 2 * (256 * D + D * D) == dit_forward_flops(m)


def test_flops_of_tokens_gated_count_the_second_pass_of_each_gated_block():
    """tokens against tokens_gated on the same sequence: torch's matmul count differs by one output projection
    per gated block (its CPU attention is not counted); the formula adds that and the second attention (the
    condition leads the sequence, so the other keys are one range and the pass runs on slices: T - Nc queries
    x T - Nc keys)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, t = {"cond": torch.randn(1, 3, 4, 4), "image": torch.randn(1, 3, 8, 8)}, {"cond": torch.zeros(1),
                                                                               "image": torch.rand(1)}
    counted = {}
    for injection, blocks in (("tokens", "all"), ("tokens_gated", "1:3")):
        m = ConditionedDiT([COND, IMG], "cond", injection, cond_blocks=blocks, hidden_size=32, depth=3, num_heads=4)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(x, t)
        flops = counter.get_flop_counts()["Global"]
        counted[injection] = (sum(v for k, v in flops.items() if "attention" not in str(k)),
                              dit_forward_flops(m, groups=2))
        assert (m.cond_keep_range == (4, 20)) if injection == "tokens_gated" else True
    T, Nc, D, gated = 4 + 16, 4, 32, 2
    assert counted["tokens_gated"][0] - counted["tokens"][0] == gated * 2 * T * D * D  # the output projections
    assert counted["tokens_gated"][1] - counted["tokens"][1] == gated * 2 * (2 * (T - Nc) ** 2 * D + T * D * D)


# ---- fused kernels ---------------------------------------------------------------------------------
def test_fast_kernels_on_refuses_rmsnorm(monkeypatch):
    m = build(norm="rmsnorm")
    with pytest.raises(ValueError, match=r"train\.fast_kernels=on.*model\.norm=rmsnorm"):
        kernels.configure_fast_kernels(m, "on", "cpu")
    monkeypatch.setattr(kernels, "resolve_fast_kernels", lambda mode, device, name="train.fast_kernels": mode != "off")  # as on a GPU
    assert kernels.configure_fast_kernels(m, "auto", "cuda") is False
    assert not any(getattr(mod, "fast_kernels", False) for mod in m.modules())
    assert kernels.configure_fast_kernels(build(), "auto", "cuda") is True  # the default model takes them
    with pytest.raises(ConfigError, match=r"train\.fast_kernels=on.*model\.norm=rmsnorm"):
        load_config(None, ["model.norm=rmsnorm", "train.fast_kernels=on"])
    load_config(None, ["model.norm=rmsnorm", "train.fast_kernels=auto"])


def test_swiglu_takes_the_fused_path(monkeypatch):
    """SwiGLU runs between the fused adaLN kernels as its own module (kernels.block_mlp): on and auto take it, and
    on the CPU (the reference kernels) the output is the eager one."""
    m = build(mlp="swiglu")
    x, t, y = inputs()
    ref = m(x, t, labels=y)["image"]
    monkeypatch.setattr(kernels, "resolve_fast_kernels", lambda mode, device, name="train.fast_kernels": mode != "off")  # as on a GPU
    assert kernels.configure_fast_kernels(m, "on", "cuda") is True
    assert all(mod.fast_kernels for mod in m.modules() if hasattr(mod, "fused_unsupported"))
    torch.testing.assert_close(m(x, t, labels=y)["image"], ref, rtol=1e-6, atol=1e-6)
    load_config(None, ["model.mlp=swiglu", "train.fast_kernels=on"])


def test_block_never_takes_the_fused_path_for_rmsnorm():
    """Even switched on directly (set_fast_kernels), a block whose norm the kernels do not compute stays eager."""
    m = build(norm="rmsnorm")
    x, t, y = inputs()
    ref = m(x, t, labels=y)["image"]
    kernels.set_fast_kernels(m, True)
    torch.testing.assert_close(m(x, t, labels=y)["image"], ref)


def test_config_checks_of_the_options():
    with pytest.raises(ConfigError, match="model.class_tokens=2 needs model.num_classes"):
        load_config(None, ["model.class_tokens=2"])
    with pytest.raises(ConfigError, match="model.label_in_adaln=false needs model.class_tokens"):
        load_config(None, ["model.num_classes=3", "model.label_in_adaln=false"])
    with pytest.raises(ConfigError, match="model.class_tokens must be >= 0"):
        load_config(None, ["model.class_tokens=-1"])
    with pytest.raises(ConfigError, match="model.mlp"):
        load_config(None, ["model.mlp=relu"])
    cfg = load_config(None, ["model.num_classes=3", "model.class_tokens=4", "model.label_in_adaln=false",
                             "model.mlp=swiglu", "model.norm=rmsnorm", "model.long_skips=true"])
    assert (cfg.model.class_tokens, cfg.model.label_in_adaln, cfg.model.long_skips) == (4, False, True)

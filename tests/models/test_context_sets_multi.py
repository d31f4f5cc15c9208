"""Several named context sets in one DiT (issue 16 item 1) and compositional guidance (item 2)."""
from pathlib import Path

import pytest
import torch

from ditlab.diffusion.guidance import DROP_ALL, drop_flags, guided
from ditlab.models.dit import ContextSpec, DiT, StreamSpec

FIXTURE = Path(__file__).parents[1] / "fixtures" / "dit_one_context_set_v1.pt"


def _perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _two_set_model(depth=3, blocks_b="all"):
    torch.manual_seed(0)
    specs = [StreamSpec("image", 3, 8, 2)]
    model = DiT(specs, hidden_size=32, depth=depth, num_heads=2, context_dim=5,
                contexts=[ContextSpec("text", 6), ContextSpec("pc", 4, blocks=blocks_b)])
    return _perturb(model)


def _inputs(B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = {"image": torch.randn(B, 3, 8, 8, generator=g)}
    t = {"image": torch.rand(B, generator=g)}
    ctx = torch.randn(B, 4, 5, generator=g)
    text = torch.randn(B, 5, 6, generator=g)
    text_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)[:B]
    pc = torch.randn(B, 7, 4, generator=g)
    pc_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)[:B]
    return x, t, ctx, {"text": (text, text_mask), "pc": (pc, pc_mask)}


def test_named_sets_have_their_own_keys_and_the_unnamed_set_keeps_the_old_ones():
    model = _two_set_model()
    keys = set(model.state_dict())
    assert "null_context" in keys and "blocks.0.cross_attn.q.weight" in keys
    assert "null_contexts.text" in keys and "blocks.0.cross_sets.pc.attn.kv.weight" in keys
    assert "blocks.2.cross_sets.text.adaLN.weight" in keys


def test_blocks_ranges():
    assert list(ContextSpec("a", 1, blocks="middle").block_range(12)) == [4, 5, 6, 7]
    assert list(ContextSpec("a", 1, blocks="1:3").block_range(4)) == [1, 2]
    with pytest.raises(ValueError, match="blocks"):
        ContextSpec("a", 1, blocks="3:9").block_range(4)
    model = _two_set_model(depth=3, blocks_b="middle")
    assert [("pc" in b.cross_sets) for b in model.blocks] == [False, True, False]


def test_padding_invariance_per_set():
    model = _two_set_model()
    x, t, ctx, sets = _inputs()
    ref = model(x, t, context=ctx, contexts=sets)["image"]
    for name in ("text", "pc"):
        c, m = sets[name]
        pad = torch.full((c.shape[0], 3, c.shape[2]), float("nan"))
        c2 = torch.cat([pad[:, :1], c, pad[:, 1:]], dim=1)  # padding before and after, NaN valued
        m2 = torch.cat([torch.zeros(c.shape[0], 1, dtype=torch.bool), m, torch.zeros(c.shape[0], 2, dtype=torch.bool)], 1)
        out = model(x, t, context=ctx, contexts={**sets, name: (c2, m2)})["image"]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_each_mask_reaches_only_its_own_set():
    model = _two_set_model()
    x, t, ctx, sets = _inputs()
    ref = model(x, t, context=ctx, contexts=sets)["image"]
    text, text_mask = sets["text"]
    changed = text.clone()
    changed[~text_mask] = 100.0  # text padding changes; the pc set and its mask stay
    out = model(x, t, context=ctx, contexts={**sets, "text": (changed, text_mask)})["image"]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # a different pc mask changes the output (the pc mask is used, by the pc cross-attention)
    pc, pc_mask = sets["pc"]
    out2 = model(x, t, context=ctx, contexts={**sets, "pc": (pc, torch.ones_like(pc_mask))})["image"]
    assert not torch.allclose(out2, ref)


def test_one_set_fully_masked_equals_model_without_its_contribution():
    model = _two_set_model()
    x, t, ctx, sets = _inputs()
    pc, pc_mask = sets["pc"]
    empty = pc_mask.clone()
    empty[1] = False  # sample 1: the pc set fully masked, the text set intact
    out = model(x, t, context=ctx, contexts={**sets, "pc": (pc, empty)})["image"]
    assert torch.isfinite(out).all()
    # the same model with the pc set's adaLN gate (and shift / scale) at zero: no pc contribution anywhere
    without = _two_set_model()
    with torch.no_grad():
        for block in without.blocks:
            block.cross_sets["pc"].adaLN.weight.zero_()
            block.cross_sets["pc"].adaLN.bias.zero_()
    ref = without(x, t, context=ctx, contexts=sets)["image"]
    torch.testing.assert_close(out[1], ref[1], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out[0], ref[0])  # other rows still see their pc set
    # gradients stay finite too
    model.train()
    model(x, t, context=ctx, contexts={**sets, "pc": (pc, empty)})["image"].square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_per_set_drop_uses_that_sets_own_null():
    model = _two_set_model()
    x, t, ctx, sets = _inputs()
    B = 3
    drop = torch.tensor([True, False, True])
    out = model(x, t, context=ctx, contexts=sets, context_drop={"text": drop})["image"]
    text, _ = sets["text"]
    null = model.null_contexts["text"].detach().expand(B, 1, 6)
    manual = model(x, t, context=ctx, contexts={**sets, "text": (torch.where(drop[:, None, None], null, text[:, :1]),
                                                                 torch.where(drop[:, None], True, sets["text"][1][:, :1]))})["image"]
    # dropped rows equal a one-element set holding the null; a kept row is unchanged
    torch.testing.assert_close(out[drop], manual[drop], atol=1e-5, rtol=1e-5)
    ref = model(x, t, context=ctx, contexts=sets)["image"]
    torch.testing.assert_close(out[1], ref[1])
    # the unnamed set's drop: "" in the dict or the plain tensor are the same
    a = model(x, t, context=ctx, contexts=sets, context_drop={"": drop})["image"]
    b = model(x, t, context=ctx, contexts=sets, context_drop=drop)["image"]
    torch.testing.assert_close(a, b)


def test_missing_or_unknown_sets_are_refused():
    model = _two_set_model()
    x, t, ctx, sets = _inputs()
    with pytest.raises(ValueError, match="'pc'"):
        model(x, t, context=ctx, contexts={"text": sets["text"]})
    with pytest.raises(ValueError, match="'txt'"):
        model(x, t, context=ctx, contexts={**sets, "txt": sets["text"]})
    with pytest.raises(ValueError, match="mask of context set 'text'"):
        model(x, t, context=ctx, contexts={**sets, "text": (sets["text"][0], sets["text"][1][:, :2])})
    with pytest.raises(ValueError, match="unique"):
        DiT([StreamSpec("image", 3, 8, 2)], hidden_size=32, depth=1, num_heads=2, context_dim=5,
            contexts=[ContextSpec("", 3)])


def test_named_sets_start_with_zero_effect():
    torch.manual_seed(0)
    specs = [StreamSpec("image", 3, 8, 2)]
    model = DiT(specs, hidden_size=32, depth=2, num_heads=2, context_dim=5, contexts=[ContextSpec("text", 6)])
    _perturb(model)
    with torch.no_grad():
        for block in model.blocks:  # fresh set: zero adaLN (as initialize_weights leaves it)
            block.cross_sets["text"].adaLN.weight.zero_()
            block.cross_sets["text"].adaLN.bias.zero_()
    one = DiT(specs, hidden_size=32, depth=2, num_heads=2, context_dim=5)
    one.load_state_dict({k: v for k, v in model.state_dict().items() if "cross_sets" not in k and "null_contexts" not in k})
    one.eval()
    x, t, ctx, sets = _inputs()
    torch.testing.assert_close(model(x, t, context=ctx, contexts={"text": sets["text"]})["image"],
                               one(x, t, context=ctx)["image"])


def test_one_set_state_dict_of_the_previous_code_loads_and_gives_the_same_output():
    saved = torch.load(FIXTURE, weights_only=True)
    torch.manual_seed(123)
    model = DiT([StreamSpec("image", 3, 8, 2)], hidden_size=32, depth=2, num_heads=2, num_classes=3, context_dim=5)
    model.load_state_dict(saved["state_dict"], strict=True)
    model.eval()
    out = model(saved["x"], saved["t"], labels=saved["labels"], context=saved["context"],
                context_mask=saved["mask"], context_drop=saved["drop"])["image"]
    torch.testing.assert_close(out, saved["out"], atol=1e-6, rtol=1e-6)
    # the one-element form: the same network as ContextSpec("", 5)
    model2 = DiT([StreamSpec("image", 3, 8, 2)], hidden_size=32, depth=2, num_heads=2, num_classes=3,
                 contexts=[ContextSpec("", 5)])
    model2.load_state_dict(saved["state_dict"], strict=True)


def test_one_set_models_draw_the_same_initial_weights():
    specs = [StreamSpec("image", 3, 8, 2)]
    torch.manual_seed(5)
    a = DiT(specs, hidden_size=32, depth=2, num_heads=2, context_dim=5)
    torch.manual_seed(5)
    b = DiT(specs, hidden_size=32, depth=2, num_heads=2, contexts=[ContextSpec("", 5)])
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


# ---- guidance: an exact Gaussian pair ------------------------------------------------------------
# x0 ~ N(mu(c), I) with mu(c) = m0 + (label kept) a + (set A kept) u + (set B kept) v + (both kept) w:
# the exact denoisers eps(x_t; c) are affine in mu(c), so every pass has a known output.
def _toy(sigma=0.6):
    m0, a, u, v, w = (torch.tensor(z) for z in ([0.1, -0.2], [0.5, 0.0], [1.0, 2.0], [-3.0, 0.5], [0.25, -0.75]))
    alpha = (1 - sigma**2) ** 0.5

    def mu(label, A, B):
        return m0 + label * a + A * u + B * v + (A * B) * w

    def exact(x, label, A, B):  # posterior mean of x0 given x_t = alpha x0 + sigma eps, x0 ~ N(mu, I)
        m = mu(label, A, B)
        x0 = (alpha * x + sigma**2 * m) / (alpha**2 + sigma**2)
        return x0, (x - alpha * x0) / sigma

    calls = []

    def denoiser(x, t, drop):
        xs = x["s"]
        all_ = drop_flags(drop).float()[:, None]
        dA = drop_flags(drop, "A").float()[:, None]
        dB = drop_flags(drop, "B").float()[:, None]
        calls.append(drop)
        x0, eps = exact(xs, 1 - all_, 1 - dA, 1 - dB)
        return {"s": (x0, eps)}

    return exact, denoiser, calls


@pytest.mark.parametrize("W,WA,WB", [(1.0, 3.0, 1.0), (1.0, 2.0, 4.0), (2.5, 0.5, 3.0), (0.0, 2.0, 2.0)])
def test_compositional_guidance_matches_the_formula_on_an_exact_gaussian_pair(W, WA, WB):
    exact, denoiser, calls = _toy()
    x = {"s": torch.randn(4, 2)}
    t = {"s": torch.full((4,), 0.5)}
    out = guided(denoiser, W, context_scales={"A": WA, "B": WB})(x, t)["s"]
    xs = x["s"]
    c = exact(xs, 1, 1, 1)
    null = exact(xs, 0, 0, 0)
    noA = exact(xs, 1, 0, 1)
    noB = exact(xs, 1, 1, 0)
    for k in range(2):  # x0 and eps
        want = null[k] + W * (c[k] - null[k]) + (WA - 1) * (c[k] - noA[k]) + (WB - 1) * (c[k] - noB[k])
        torch.testing.assert_close(out[k], want, atol=1e-6, rtol=1e-6)
    # one batched call; passes only for the terms that need them
    assert len(calls) == 1
    assert calls[0][DROP_ALL].shape[0] == 4 * (1 + (W != 1) + (WA != 1) + (WB != 1))


def test_one_set_compositional_guidance_is_plain_cfg():
    exact, denoiser, _ = _toy()

    def one_set(x, t, drop):  # a model whose only condition is set A
        xs = x["s"]
        dA = drop_flags(drop, "A").float()[:, None]
        return {"s": exact(xs, 0, 1 - dA, 0)}

    x = {"s": torch.randn(3, 2)}
    t = {"s": torch.full((3,), 0.5)}
    a = guided(one_set, 1.0, context_scales={"A": 3.0})(x, t)["s"]
    b = guided(one_set, 3.0)(x, t)["s"]
    for k in range(2):
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-6)


def test_guidance_with_all_weights_one_is_the_conditional_model():
    exact, denoiser, calls = _toy()
    x = {"s": torch.randn(3, 2)}
    t = {"s": torch.full((3,), 0.5)}
    out = guided(denoiser, 1.0, context_scales={"A": 1.0})(x, t)["s"]
    torch.testing.assert_close(out[1], exact(x["s"], 1, 1, 1)[1])
    assert isinstance(calls[0], torch.Tensor) and not calls[0].any()


def test_init_from_a_one_set_run_adds_a_named_set_with_zero_effect_that_learns(tmp_path):
    from ditlab.train.checkpoint import save_checkpoint
    from ditlab.train.init_from import init_from

    specs = [StreamSpec("image", 3, 8, 2)]
    torch.manual_seed(0)
    old = _perturb(DiT(specs, hidden_size=32, depth=2, num_heads=2, context_dim=5))
    save_checkpoint(tmp_path / "stage1", 1, old, ema=old)
    torch.manual_seed(7)
    new = DiT(specs, hidden_size=32, depth=2, num_heads=2, context_dim=5, contexts=[ContextSpec("text", 6)])
    report = init_from(new, str(tmp_path / "stage1"))
    assert any(".cross_sets.text.attn." in k for k in report["fresh"])
    new.eval()
    x, t, ctx, sets = _inputs()
    torch.testing.assert_close(new(x, t, context=ctx, contexts={"text": sets["text"]})["image"],
                               old(x, t, context=ctx)["image"])
    new.train()
    new(x, t, context=ctx, contexts={"text": sets["text"]})["image"].square().sum().backward()
    assert new.blocks[0].cross_sets["text"].adaLN.weight.grad.abs().sum() > 0  # the gate learns

"""Issue 15, item 6: NaN or inf in masked (padding) positions never reach an output or a gradient, and
0 / 1 float masks (1 = real, 0 = padding) mean the same as bool masks; other float values are refused.

Padding is zeroed with torch.where before any projection, so an input with NaN / inf in its padding
and the same input with zeros there are the same tensors from the first layer on: the outputs and the
gradients are compared exactly (same process, same shapes, same kernels: equal by construction).
"""
from __future__ import annotations

import pytest
import torch

from ditlab.models.dit import DiT, StreamSpec
from ditlab.models.point_set import SceneDiT

BAD = [float("nan"), float("inf"), -float("inf")]
BAD_IDS = ["nan", "inf", "-inf"]

COND = StreamSpec("a", 3, 5, kind="tokens", positions="index", predict=False)  # a condition token stream
TARGET = StreamSpec("b", 2, 5, kind="tokens", positions="index")  # a predicted token stream
IMG = StreamSpec("image", 3, 8, 2)
LOW = StreamSpec("low", 3, 8, 2, predict=False)  # an image condition stream: a 4 x 4 grid of 2 x 2 patches


def perturbed(model):
    """adaLN-Zero starts as the identity with a zero output: perturb so the outputs depend on the inputs."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def token_dit() -> DiT:
    torch.manual_seed(0)
    return perturbed(DiT([COND, TARGET], hidden_size=32, depth=2, num_heads=4, context_dim=6))


def image_dit() -> DiT:
    torch.manual_seed(0)
    return perturbed(DiT([LOW, IMG], hidden_size=32, depth=2, num_heads=4))


def scene_dit() -> SceneDiT:
    torch.manual_seed(0)
    dit = DiT([StreamSpec("points", 3, 6, kind="tokens", positions="none")], hidden_size=32, depth=2,
              num_heads=4, context_dim=32)
    return perturbed(SceneDiT(dit, "points", context_channels=4, bands=3))


def token_inputs():
    g = torch.Generator().manual_seed(1)
    x = {"a": torch.randn(3, 5, 3, generator=g), "b": torch.randn(3, 5, 2, generator=g)}
    t = {"a": torch.zeros(3), "b": torch.rand(3, generator=g)}
    ctx = torch.randn(3, 7, 6, generator=g)
    ctx_mask = torch.arange(7)[None] < torch.tensor([[7], [3], [0]])  # full, padded, empty
    tok_mask = {"a": torch.arange(5)[None] < torch.tensor([[5], [2], [4]]),
                "b": torch.arange(5)[None] < torch.tensor([[4], [5], [1]])}
    return x, t, ctx, ctx_mask, tok_mask


def fill(x, keep, value):
    """x with ``value`` where ``keep`` (broadcast over the trailing feature dim) is False."""
    return torch.where(keep[..., None], x, torch.full_like(x, value))


def outputs_and_grads(model, run):
    """run(model) -> dict of outputs; returns the outputs and every parameter's gradient of a loss."""
    model.zero_grad(set_to_none=True)
    out = run(model)
    sum(v.square().mean() for v in out.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


def assert_finite_and_equal(a, b):
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert out_a.keys() == out_b.keys() and grads_a.keys() == grads_b.keys() and grads_a
    for k in out_a:
        assert torch.isfinite(out_a[k]).all(), k
        assert torch.equal(out_a[k], out_b[k]), k  # the same tensors after the zeroing: exact
    for n in grads_a:
        assert torch.isfinite(grads_a[n]).all(), n
        assert torch.equal(grads_a[n], grads_b[n]), n


# ---- NaN / inf in padding -------------------------------------------------------------------------
@pytest.mark.parametrize("value", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("drop", [None, torch.tensor([False, True, False])], ids=["no-drop", "context-drop"])
def test_dit_context_padding_never_reaches_outputs_or_gradients(value, drop):
    model = token_dit().train()  # dropout is 0: train mode only so that gradients are the training ones
    x, t, ctx, ctx_mask, _ = token_inputs()

    def run(context):
        return lambda m: m(x, t, context=context, context_mask=ctx_mask, context_drop=drop)

    assert_finite_and_equal(outputs_and_grads(model, run(fill(ctx, ctx_mask, value))),
                            outputs_and_grads(model, run(fill(ctx, ctx_mask, 0.0))))


@pytest.mark.parametrize("value", BAD, ids=BAD_IDS)
def test_dit_masked_tokens_never_reach_outputs_or_gradients(value):
    """Masked tokens of a condition stream and of the predicted stream, with a context set as well."""
    model = token_dit().train()
    x, t, ctx, ctx_mask, tok_mask = token_inputs()

    def run(xs):
        return lambda m: m(xs, t, token_mask=tok_mask, context=ctx, context_mask=ctx_mask)

    bad = {k: fill(v, tok_mask[k], value) for k, v in x.items()}
    zero = {k: fill(v, tok_mask[k], 0.0) for k, v in x.items()}
    assert_finite_and_equal(outputs_and_grads(model, run(bad)), outputs_and_grads(model, run(zero)))


@pytest.mark.parametrize("value", BAD, ids=BAD_IDS)
def test_dit_masked_image_patches_never_reach_outputs_or_gradients(value):
    """A token_mask on an image stream masks whole patches: their pixels are zeroed before the patch
    embedding (the superres dummy-condition layout)."""
    model = image_dit().train()
    g = torch.Generator().manual_seed(2)
    x = {"low": torch.randn(2, 3, 8, 8, generator=g), "image": torch.randn(2, 3, 8, 8, generator=g)}
    t = {"low": torch.zeros(2), "image": torch.rand(2, generator=g)}
    keep = torch.ones(2, 16, dtype=torch.bool)
    keep[0, 5] = keep[1, 12:] = False  # patch (1, 1) of sample 0, the bottom row of sample 1
    pixels = keep.view(2, 4, 1, 4, 1).expand(2, 4, 2, 4, 2).reshape(2, 1, 8, 8)

    def run(low):
        return lambda m: m({"low": low, "image": x["image"]}, t, token_mask={"low": keep})

    bad = torch.where(pixels, x["low"], value)
    zero = torch.where(pixels, x["low"], 0.0)
    assert not torch.isfinite(bad).all() and bool(torch.isfinite(bad[:, :, :2, :2]).all())  # only the masked ones
    assert_finite_and_equal(outputs_and_grads(model, run(bad)), outputs_and_grads(model, run(zero)))


@pytest.mark.parametrize("value", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("drop", [None, torch.tensor([True, False, False])], ids=["no-drop", "context-drop"])
def test_scene_dit_padded_points_never_reach_outputs_or_gradients(value, drop):
    """SceneDiT embeds the context with an MLP before the DiT sees it: the padding is zeroed before that
    MLP (otherwise its weight gradients take 0 * NaN)."""
    model = scene_dit().train()
    g = torch.Generator().manual_seed(3)
    x = {"points": torch.randn(3, 6, 3, generator=g)}
    t = {"points": torch.rand(3, generator=g)}
    scene = torch.randn(3, 9, 4, generator=g)
    mask = torch.arange(9)[None] < torch.tensor([[9], [4], [0]])

    def run(context):
        return lambda m: m(x, t, context=context, context_mask=mask, context_drop=drop)

    assert_finite_and_equal(outputs_and_grads(model, run(fill(scene, mask, value))),
                            outputs_and_grads(model, run(fill(scene, mask, 0.0))))


# ---- 0 / 1 float masks ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.uint8])
def test_dit_01_masks_equal_bool_masks(dtype):
    model = token_dit().eval()
    x, t, ctx, ctx_mask, tok_mask = token_inputs()
    ref = model(x, t, token_mask=tok_mask, context=ctx, context_mask=ctx_mask)["b"]
    out = model(x, t, token_mask={k: v.to(dtype) for k, v in tok_mask.items()}, context=ctx,
                context_mask=ctx_mask.to(dtype))["b"]
    assert torch.equal(out, ref)  # converted to the same bool masks: the same computation
    drop = torch.tensor([True, False, False])
    ref = model(x, t, context=fill(ctx, ctx_mask, float("nan")), context_mask=ctx_mask, context_drop=drop)["b"]
    out = model(x, t, context=fill(ctx, ctx_mask, float("nan")), context_mask=ctx_mask.to(dtype),
                context_drop=drop)["b"]
    assert torch.isfinite(out).all() and torch.equal(out, ref)


def test_scene_dit_01_mask_equals_bool_mask():
    model = scene_dit().eval()
    g = torch.Generator().manual_seed(4)
    x, t = {"points": torch.randn(2, 6, 3, generator=g)}, {"points": torch.rand(2, generator=g)}
    mask = torch.arange(9)[None] < torch.tensor([[9], [5]])
    scene = fill(torch.randn(2, 9, 4, generator=g), mask, float("nan"))
    ref = model(x, t, context=scene, context_mask=mask)["points"]
    out = model(x, t, context=scene, context_mask=mask.float())["points"]
    assert torch.isfinite(out).all() and torch.equal(out, ref)


@pytest.mark.parametrize("value", [0.5, -1.0, 2.0, float("nan")], ids=["half", "minus-one", "two", "nan"])
def test_other_float_mask_values_are_refused_naming_the_mask(value):
    x, t, ctx, ctx_mask, tok_mask = token_inputs()
    model = token_dit().eval()
    bad = ctx_mask.float()
    bad[1, 1] = value
    shown = "nan" if value != value else repr(value)
    with pytest.raises(ValueError, match=rf"context_mask .*0 and 1.*holds {shown}"):
        model(x, t, context=ctx, context_mask=bad)
    bad_tokens = {**tok_mask, "b": tok_mask["b"].float()}
    bad_tokens["b"][0, 0] = value
    with pytest.raises(ValueError, match=rf"token_mask\['b'\] .*holds {shown}"):
        model(x, t, context=ctx, token_mask=bad_tokens)
    g = torch.Generator().manual_seed(5)
    scene_mask = torch.ones(2, 9)
    scene_mask[1, 4] = value
    with pytest.raises(ValueError, match=rf"context_mask .*holds {shown}"):
        scene_dit()({"points": torch.randn(2, 6, 3, generator=g)}, {"points": torch.rand(2, generator=g)},
                    context=torch.randn(2, 9, 4, generator=g), context_mask=scene_mask)


def test_additive_float_mask_is_refused():
    """The other convention (0 = keep, finfo.min = ignore) is never reinterpreted."""
    x, t, ctx, ctx_mask, _ = token_inputs()
    additive = torch.zeros(3, 7).masked_fill(~ctx_mask, torch.finfo(torch.float32).min)
    with pytest.raises(ValueError, match=r"context_mask .*holds -3\.4"):
        token_dit()(x, t, context=ctx, context_mask=additive)


def test_scene_dit_context_mask_of_the_wrong_shape_names_both_shapes():
    g = torch.Generator().manual_seed(6)
    with pytest.raises(ValueError, match=r"context_mask has shape \(2, 8\), expected \(2, 9\)"):
        scene_dit()({"points": torch.randn(2, 6, 3, generator=g)}, {"points": torch.rand(2, generator=g)},
                    context=torch.randn(2, 9, 4, generator=g), context_mask=torch.ones(2, 8))

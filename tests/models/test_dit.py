import pytest
import torch

from ditlab.config import ModelConfig
from ditlab.models.dit import DIT_ARCHS, DiT, StreamSpec, build_dit, parse_arch


def tiny(streams, **kw):
    torch.manual_seed(0)
    model = DiT(streams, hidden_size=32, depth=2, num_heads=4, **kw)
    # adaLN-Zero starts as the identity; perturb so tests see a non-trivial network
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


IMG = StreamSpec("image", 3, 8, 2)
COND = StreamSpec("cond", 3, 4, 2, predict=False, pos_scale=2.0)


def test_size_table():
    assert len(DIT_ARCHS) == 12
    assert parse_arch("DiT-B/2") == (768, 12, 12, 2)
    with pytest.raises(ValueError, match="DiT-S/2"):
        parse_arch("DiT-M/2")


def test_output_shapes_and_predicted_streams_only():
    model = tiny([COND, IMG], num_classes=5)
    x = {"image": torch.randn(2, 3, 8, 8), "cond": torch.randn(2, 3, 4, 4)}
    t = {"image": torch.rand(2), "cond": torch.zeros(2)}
    out = model(x, t, labels=torch.tensor([0, 4]))
    assert set(out) == {"image"} and out["image"].shape == (2, 3, 8, 8)


def test_per_token_t_equal_to_per_sample_when_constant():
    model = tiny([COND, IMG])
    x = {"image": torch.randn(2, 3, 8, 8), "cond": torch.randn(2, 3, 4, 4)}
    t = {"image": torch.tensor([0.3, 0.7]), "cond": torch.tensor([0.0, 0.2])}
    per_token = {"image": t["image"][:, None].expand(2, 16).clone(), "cond": t["cond"][:, None].expand(2, 4).clone()}
    torch.testing.assert_close(model(x, t)["image"], model(x, per_token)["image"], atol=1e-5, rtol=1e-5)


def test_per_token_t_reaches_each_token():
    """Changing the noise level of one condition token changes the output: modulation is per token."""
    model = tiny([COND, IMG])
    x = {"image": torch.randn(1, 3, 8, 8), "cond": torch.randn(1, 3, 4, 4)}
    t1 = {"image": torch.full((1, 16), 0.5), "cond": torch.zeros(1, 4)}
    t2 = {"image": t1["image"], "cond": torch.tensor([[0.0, 0.0, 0.9, 0.0]])}
    assert not torch.allclose(model(x, t1)["image"], model(x, t2)["image"], atol=1e-4)


def test_context_padding_invariance():
    model = tiny([IMG], context_dim=6)
    x = {"image": torch.randn(2, 3, 8, 8)}
    t = {"image": torch.rand(2)}
    ctx = torch.randn(2, 10, 6)
    mask = torch.arange(10)[None] < torch.tensor([[10], [4]])
    padded = model(x, t, context=ctx, context_mask=mask)["image"]
    ref = model({"image": x["image"][1:]}, {"image": t["image"][1:]}, context=ctx[1:, :4])["image"]
    torch.testing.assert_close(padded[1:], ref, atol=1e-5, rtol=1e-5)


def test_fully_masked_context_finite_gradients():
    model = tiny([IMG], context_dim=6).train()
    x = {"image": torch.randn(2, 3, 8, 8)}
    out = model(x, {"image": torch.rand(2)}, context=torch.randn(2, 5, 6),
                context_mask=torch.zeros(2, 5, dtype=torch.bool))["image"]
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_token_padding_of_condition_stream():
    """Masked condition tokens do not influence the target's output."""
    model = tiny([COND, IMG])
    x = {"image": torch.randn(1, 3, 8, 8), "cond": torch.randn(1, 3, 4, 4)}
    t = {"image": torch.rand(1), "cond": torch.zeros(1)}
    mask = {"cond": torch.tensor([[True, True, False, False]])}
    a = model(x, t, token_mask=mask)["image"]
    x2 = {"image": x["image"], "cond": x["cond"].clone()}
    x2["cond"][..., 2:, :] = 50.0  # the masked patches (bottom row of the 2x2 grid)
    torch.testing.assert_close(a, model(x2, t, token_mask=mask)["image"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos", ["sincos", "rope"])
def test_build_from_config_and_backward(pos):
    cfg = ModelConfig(arch="DiT-S/4", hidden_size=32, depth=2, num_heads=2, num_classes=3, pos_embed=pos,
                      attn_dropout=0.1)
    model = build_dit(cfg, [StreamSpec("image", 3, 16, 4)]).train()
    out = model({"image": torch.randn(2, 3, 16, 16)}, {"image": torch.rand(2)}, labels=torch.tensor([0, 2]),
                label_drop=torch.tensor([True, False]))["image"]
    out.mean().backward()
    # adaLN-Zero: the output layer starts at zero
    assert torch.count_nonzero(out) == 0


def test_output_init_xavier_starts_with_a_nonzero_output_and_gradients_upstream():
    cfg = ModelConfig(arch="DiT-S/4", hidden_size=32, depth=2, num_heads=2, output_init="xavier")
    torch.manual_seed(0)
    model = build_dit(cfg, [StreamSpec("image", 3, 16, 4)])
    out = model({"image": torch.randn(2, 3, 16, 16)}, {"image": torch.rand(2)})["image"]
    assert torch.count_nonzero(out) == out.numel()
    out.square().mean().backward()
    # the gates of the blocks start at zero either way; with a random output layer they get a gradient
    assert model.blocks[-1].adaLN.weight.grad.abs().sum() > 0
    # everything but the output layer is initialised as with the default
    torch.manual_seed(0)
    zero = build_dit(ModelConfig(arch="DiT-S/4", hidden_size=32, depth=2, num_heads=2), [StreamSpec("image", 3, 16, 4)])
    differ = [n for n, p in model.state_dict().items() if not torch.equal(p, zero.state_dict()[n])]
    assert differ == ["final.image.linear.weight"]
    with pytest.raises(ValueError, match="model.output_init"):
        DiT([IMG], hidden_size=32, depth=1, num_heads=4, output_init="normal")


def test_bad_shapes_are_named():
    model = tiny([IMG])
    with pytest.raises(ValueError, match="stream 'image' has shape"):
        model({"image": torch.randn(1, 3, 4, 4)}, {"image": torch.rand(1)})
    with pytest.raises(ValueError, match="noise level of stream 'image'"):
        model({"image": torch.randn(1, 3, 8, 8)}, {"image": torch.rand(1, 3)})


def test_dropped_condition_stream_uses_the_learned_null():
    model = tiny([COND, IMG]).train()
    x = {"image": torch.randn(2, 3, 8, 8), "cond": torch.randn(2, 3, 4, 4)}
    t = {"image": torch.rand(2), "cond": torch.zeros(2)}
    drop = {"cond": torch.tensor([True, False])}
    a = model(x, t, stream_drop=drop)["image"]
    x2 = {"image": x["image"], "cond": torch.randn(2, 3, 4, 4)}
    b = model(x2, t, stream_drop=drop)["image"]
    torch.testing.assert_close(a[0], b[0])  # the dropped sample ignores its condition
    assert not torch.allclose(a[1], b[1])  # the kept one does not
    a.square().mean().backward()
    assert model.null_tokens["cond"].grad is not None and model.null_tokens["cond"].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="cannot be dropped"):
        model(x, t, stream_drop={"image": torch.tensor([True, True])})


def test_dropped_context_uses_the_learned_null_and_stays_finite():
    model = tiny([IMG], context_dim=6)
    x, t = {"image": torch.randn(2, 3, 8, 8)}, {"image": torch.rand(2)}
    mask = torch.tensor([[True] * 5, [False] * 5])  # sample 1 has an empty context
    drop = torch.tensor([True, True])
    a = model(x, t, context=torch.randn(2, 5, 6), context_mask=mask, context_drop=drop)["image"]
    b = model(x, t, context=torch.randn(2, 5, 6), context_mask=mask, context_drop=drop)["image"]
    torch.testing.assert_close(a, b)  # dropped: the content no longer matters
    assert torch.isfinite(a).all()
    empty = model(x, t, context=torch.randn(2, 5, 6), context_mask=torch.zeros(2, 5, dtype=torch.bool))["image"]
    assert not torch.allclose(a, empty)  # the null element is learned, not "no context"


def test_token_set_stream_is_permutation_equivariant():
    points = StreamSpec("points", 3, 10, kind="tokens", positions="none")
    model = tiny([points], context_dim=4)
    x = {"points": torch.randn(2, 10, 3)}
    t = {"points": torch.rand(2)}
    ctx = torch.randn(2, 7, 4)
    out = model(x, t, context=ctx)["points"]
    assert out.shape == (2, 10, 3)
    perm = torch.randperm(10)
    out_perm = model({"points": x["points"][:, perm]}, t, context=ctx)["points"]
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-5, rtol=1e-5)


def test_indexed_token_stream_is_not_a_set():
    seq = StreamSpec("seq", 2, 6, kind="tokens", positions="index")
    model = tiny([seq])
    x, t = {"seq": torch.randn(1, 6, 2)}, {"seq": torch.rand(1)}
    perm = torch.tensor([1, 0, 2, 3, 4, 5])
    assert not torch.allclose(model({"seq": x["seq"][:, perm]}, t)["seq"], model(x, t)["seq"][:, perm], atol=1e-4)
    with pytest.raises(ValueError, match="positions must be"):
        StreamSpec("bad", 2, 6, kind="tokens", positions="grid")

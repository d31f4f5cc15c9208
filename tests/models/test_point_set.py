"""The scene network: point embeddings, padding invariance of the context set, dropped contexts."""
import math

import pytest
import torch

from ditlab.models.dit import DiT, StreamSpec
from ditlab.models.point_set import PointEmbed, SceneDiT, fourier_features

K, P = 8, 12


def scene_net(seed=0, cross_attn_dropout=0.0):
    torch.manual_seed(seed)
    dit = DiT([StreamSpec("points", 3, K, kind="tokens", positions="none")], hidden_size=32, depth=2, num_heads=4,
              context_dim=32, cross_attn_dropout=cross_attn_dropout)
    model = SceneDiT(dit, "points", context_channels=4, bands=3)
    # adaLN-Zero starts as the identity with a zero output; perturb so tests see a non-trivial network.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def scene_inputs(batch=3, flag=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(batch, P, 3, generator=g) * 2 - 1
    flags = (torch.rand(batch, P, 1, generator=g) < 0.4).float() if flag else torch.zeros(batch, P, 1)
    x = {"points": torch.randn(batch, K, 3, generator=g)}
    t = {"points": torch.rand(batch, generator=g)}
    return x, t, torch.cat([xyz, flags], dim=-1)


def test_fourier_features_formula():
    xyz = torch.tensor([[0.25, -0.5, 1.0]])
    f = fourier_features(xyz, bands=2)
    assert f.shape == (1, 3 + 12)
    torch.testing.assert_close(f[0, :3], xyz[0])
    # angles are ordered (coordinate, band): x * pi, x * 2 pi, y * pi, ...
    angles = torch.tensor([0.25 * math.pi, 0.5 * math.pi, -0.5 * math.pi, -math.pi, math.pi, 2 * math.pi])
    torch.testing.assert_close(f[0, 3:9], angles.sin())
    torch.testing.assert_close(f[0, 9:], angles.cos())


def test_point_embed_acts_on_each_point_alone():
    embed = PointEmbed(4, 16, bands=2)
    pts = torch.randn(2, 5, 4)
    out = embed(pts)
    moved = pts.clone()
    moved[0, 3] += 1.0
    changed = (embed(moved) - out).abs().sum(-1) > 1e-6  # (2, 5)
    assert changed.tolist() == [[False, False, False, True, False], [False] * 5]


@pytest.mark.parametrize("flag", [True, False], ids=["target-flag", "no-flag"])
def test_prediction_does_not_depend_on_padding(flag):
    """The same scenes padded to different lengths, with garbage in the padding, give the same output."""
    model = scene_net()
    x, t, scene = scene_inputs(flag=flag)
    lengths = torch.tensor([12, 7, 3])
    mask = torch.arange(P)[None] < lengths[:, None]
    scene = torch.where(mask[..., None], scene, torch.zeros_like(scene))
    ref = model(x, t, context=scene, context_mask=mask)["points"]
    for extra in (5, 40):
        garbage = 10 * torch.randn(3, extra, 4)
        padded = torch.cat([torch.where(mask[..., None], scene, 7.0), garbage], dim=1)
        padded_mask = torch.cat([mask, torch.zeros(3, extra, dtype=torch.bool)], dim=1)
        out = model(x, t, context=padded, context_mask=padded_mask)["points"]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # ...and each padded scene equals that scene alone, unpadded.
    alone = model({"points": x["points"][1:2]}, {"points": t["points"][1:2]}, context=scene[1:2, :7])["points"]
    torch.testing.assert_close(ref[1:2], alone, atol=1e-5, rtol=1e-5)


def test_the_target_flag_changes_the_prediction():
    """Guard for the test above: the context is not ignored (moving the flag moves the output)."""
    model = scene_net()
    x, t, scene = scene_inputs(flag=True)
    other = scene.clone()
    other[..., 3] = 1 - other[..., 3]
    assert not torch.allclose(model(x, t, context=scene)["points"], model(x, t, context=other)["points"], atol=1e-4)


@pytest.mark.parametrize("how", ["all-padding", "dropped"])
def test_empty_or_dropped_context_is_finite_with_finite_grads(how):
    model = scene_net().train()
    x, t, scene = scene_inputs()
    mask = torch.zeros(3, P, dtype=torch.bool) if how == "all-padding" else torch.ones(3, P, dtype=torch.bool)
    drop = torch.ones(3, dtype=torch.bool) if how == "dropped" else None
    out = model(x, t, context=scene, context_mask=mask, context_drop=drop)["points"]
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_dropped_context_ignores_the_scene():
    model = scene_net()
    x, t, scene = scene_inputs()
    drop = torch.tensor([True, False, True])
    a = model(x, t, context=scene, context_drop=drop)["points"]
    b = model(x, t, context=torch.randn_like(scene), context_drop=drop)["points"]
    torch.testing.assert_close(a[drop], b[drop])
    assert not torch.allclose(a[~drop], b[~drop], atol=1e-4)


def test_scene_dit_needs_cross_attention_and_a_token_stream():
    plain = DiT([StreamSpec("points", 3, K, kind="tokens", positions="none")], hidden_size=32, depth=1, num_heads=4)
    with pytest.raises(ValueError, match="context_dim"):
        SceneDiT(plain, "points", 4, 2)
    dit = DiT([StreamSpec("points", 3, K, kind="tokens", positions="none")], hidden_size=32, depth=1, num_heads=4, context_dim=32)
    with pytest.raises(ValueError, match="'cloud'"):
        SceneDiT(dit, "cloud", 4, 2)

"""ICL prompts: moments of the prior, the y scaling, the curriculum, the prefix mask's layout."""
import pytest
import torch

from ditlab.config import ICLConfig
from ditlab.tasks.icl.data import ICLTrainData, draw_prompts, y_scale
from ditlab.tasks.icl.layout import prefix_attention_mask


def test_prompt_moments_match_the_prior():
    g = torch.Generator().manual_seed(0)
    d, tau, sigma = 4, 0.7, 0.5
    p = draw_prompts(40_000, 3, d, tau, sigma, generator=g, dtype=torch.float64)
    assert abs(p.x.mean()) < 0.01 and abs(p.x.var() - 1) < 0.01
    assert abs(p.w.var() - tau**2) < 0.01
    resid = p.y - torch.einsum("bnd,bd->bn", p.x, p.w)
    assert abs(resid.var() - sigma**2) < 0.01
    assert abs(p.y.var() - (tau**2 * d + sigma**2)) < 0.05 * (tau**2 * d + sigma**2)
    # Network units: the noiseless part of y has unit variance whatever d is.
    scaled = p.y * y_scale(tau, d)
    assert abs(scaled.var() - (1 + sigma**2 / (tau**2 * d))) < 0.03


def test_inactive_coordinates_are_zero():
    p = draw_prompts(8, 5, 6, 1.0, 0.0, active_d=torch.tensor(2))
    assert (p.x[..., 2:] == 0).all() and (p.x[..., :2] != 0).all()
    torch.testing.assert_close(p.y, torch.einsum("bnd,bd->bn", p.x[..., :2], p.w[:, :2]))


def test_curriculum_grows_with_the_step_and_advance_moves_it():
    cfg = ICLConfig(d=5, n_points=11, d_start=2, points_start=5, d_inc=1, points_inc=2, curriculum_every=3)
    data = ICLTrainData(cfg)
    seen = []
    for _ in range(12):
        b = data.batch(torch.arange(4))
        assert int(data.step) == len(seen)  # batch() leaves the clock alone (it runs inside the compiled step)
        data.advance()
        active_d = int((b["x"][0] != 0).any(0).sum())
        seen.append((active_d, int(b["point_mask"][0].sum())))
    assert seen[:3] == [(2, 5)] * 3 and seen[3:6] == [(3, 7)] * 3 and seen[9:] == [(5, 11)] * 3
    data.set_step(100)  # a resumed run continues where the curriculum was
    assert [int(v) for v in data.active()] == [5, 11]
    assert int(data.step) == 100


def test_no_curriculum_when_start_is_zero():
    data = ICLTrainData(ICLConfig(d=3, n_points=4))
    assert [int(v) for v in data.active()] == [3, 4]


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="icl.d_start"):
        ICLTrainData(ICLConfig(d=3, d_start=5))


def test_prefix_mask_layout():
    n = 4
    m = prefix_attention_mask(n)
    X, Y, Q = 0, n, 2 * n  # offsets of the x, clean y and noised y tokens
    for i in range(n):
        for j in range(n):
            assert m[Q + i, X + j] == (j <= i)  # noised y_i sees x_1..x_i
            assert m[Q + i, Y + j] == (j < i)  # clean y_1..y_{i-1}, never its own clean copy
            assert m[Q + i, Q + j] == (j == i)  # and itself only among noised tokens
            assert m[X + i, X + j] == (j <= i) and m[X + i, Y + j] == (j < i)
            assert m[Y + i, X + j] == (j <= i) and m[Y + i, Y + j] == (j <= i)
            assert not m[X + i, Q + j] and not m[Y + i, Q + j]  # nobody reads a noised token

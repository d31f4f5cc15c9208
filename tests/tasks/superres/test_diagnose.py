import pytest
import torch

from ditlab.eval.collapse import collapse_verdict, spread_stats


def synthetic(noise_scale, M=8, K=6, D=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    conditions = 3.0 * torch.randn(M, 1, D, generator=g)
    return conditions + noise_scale * torch.randn(M, K, D, generator=g)


def test_variance_decomposition_is_exact():
    x = synthetic(1.0)
    s = spread_stats(x)
    flat = x.reshape(-1, x.shape[-1]).double()
    total = (flat - flat.mean(0)).square().sum(-1).mean().item()
    assert s.within + s.between == pytest.approx(total, rel=1e-10)


def test_collapsed_model_is_flagged_and_healthy_model_is_not():
    assert collapse_verdict(spread_stats(synthetic(0.0)))["collapsed"]
    assert collapse_verdict(spread_stats(synthetic(0.01)))["collapsed"]
    healthy = collapse_verdict(spread_stats(synthetic(1.5)))
    assert not healthy["collapsed"] and 0.1 < healthy["seed_share"] < 0.5


def test_unconditional_model_has_seed_share_near_one():
    g = torch.Generator().manual_seed(1)
    s = spread_stats(torch.randn(8, 16, 30, generator=g))
    assert s.seed_share > 0.8
    # two random D-dim Gaussian vectors are ~sqrt(2 D) apart
    assert s.pairwise_seed_distance == pytest.approx((2 * 30) ** 0.5, rel=0.1)


def test_shape_errors():
    with pytest.raises(ValueError, match="2 seeds"):
        spread_stats(torch.zeros(4, 1, 3))
    with pytest.raises(ValueError, match="conditions, seeds"):
        spread_stats(torch.zeros(4, 3))


def test_residual_energy_is_the_detail_below_the_low_resolution():
    from ditlab.tasks.superres.diagnose import residual_energy

    blocky = torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8).repeat_interleave(2, 2).repeat_interleave(2, 3)
    assert residual_energy(blocky, 2) == 0.0  # nothing below the 2x grid
    x = torch.zeros(1, 1, 2, 2, dtype=torch.uint8)
    x[0, 0, 0, 0] = 255  # one bright pixel in a 2x2 block: mean 0.25, residual 0.75^2 + 3 * 0.25^2
    assert residual_energy(x, 2) == pytest.approx(0.75**2 + 3 * 0.25**2)

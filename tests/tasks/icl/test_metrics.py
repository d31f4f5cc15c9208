"""Calibration metrics: exact samples are calibrated, a too-narrow sampler is not."""
import numpy as np
import pytest

from ditlab.tasks.icl import metrics as m


def exact_draws(P=400, S=100, N=3, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((P, N))
    var = rng.uniform(0.2, 2.0, (P, N))
    y = mean + np.sqrt(var) * rng.standard_normal((P, N))
    samples = mean[:, None] + spread * np.sqrt(var)[:, None] * rng.standard_normal((P, S, N))
    return samples, mean, var, y


def test_exact_samples_have_nominal_coverage_and_uniform_pit():
    samples, mean, var, y = exact_draws()
    for level, cov in m.exact_coverage(samples, mean, var).items():
        np.testing.assert_allclose(cov, level, atol=0.01)  # weibull positions: no small-S bias
    for level, cov in m.empirical_coverage(samples, y).items():
        np.testing.assert_allclose(cov, level, atol=0.05)  # one target per prompt: noisier
    hist = m.pit_histogram(m.exact_pit(samples, mean, var))
    np.testing.assert_allclose(hist, 0.1, atol=0.005)
    np.testing.assert_allclose(m.log_variance_ratio(samples, var), 0.0, atol=0.03)


def test_too_narrow_samples_under_cover():
    samples, mean, var, _ = exact_draws(spread=0.7)
    cov = m.exact_coverage(samples, mean, var)
    assert np.all(cov[0.9] < 0.8)
    hist = m.pit_histogram(m.exact_pit(samples, mean, var))
    assert hist[0] < 0.05 and hist[4] > 0.12  # mass piles up in the middle
    np.testing.assert_allclose(m.log_variance_ratio(samples, var), 2 * np.log(0.7), atol=0.03)


def test_crps_of_an_exact_ensemble_matches_the_closed_form():
    samples, mean, var, y = exact_draws(S=200)
    np.testing.assert_allclose(m.crps_ensemble(samples, y).mean(), m.crps_gaussian(mean, var, y).mean(), rtol=0.01)
    # closed form at a point: N(0, 1) at y = 0 has CRPS (sqrt(2) - 1) / sqrt(pi)
    assert m.crps_gaussian(np.zeros(1), np.ones(1), np.zeros(1))[0] == pytest.approx((np.sqrt(2) - 1) / np.sqrt(np.pi))


def test_zero_variance_queries_have_no_calibration():
    samples, mean, var, _ = exact_draws(N=2)
    var[:, 1] = 0.0
    cov = m.exact_coverage(samples, mean, var)
    assert np.isnan(cov[0.5][1]) and not np.isnan(cov[0.5][0])


def test_bootstrap_band_brackets_the_mean():
    rng = np.random.default_rng(0)
    values = rng.exponential(size=(500, 3))
    lo, hi = m.bootstrap_mean_band(values, rng, num=300)
    assert np.all(lo < values.mean(0)) and np.all(values.mean(0) < hi) and np.all(hi - lo < 0.4)
    rlo, rhi = m.bootstrap_ratio_band(values, values * 2, rng, num=100)
    np.testing.assert_allclose(rlo, 0.5) and np.testing.assert_allclose(rhi, 0.5)

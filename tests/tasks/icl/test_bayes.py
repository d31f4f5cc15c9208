"""The exact Bayesian answer to in-context regression, checked against independent derivations."""
import numpy as np
import pytest

from ditlab.tasks.icl import bayes as bayes


def prompts(P=6, N=7, d=4, tau=0.8, sigma=0.5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((P, N, d))
    w = tau * rng.standard_normal((P, d))
    y = np.einsum("pnd,pd->pn", x, w) + sigma * rng.standard_normal((P, N))
    return x, w, y


def function_space_predictive(x, y, i, tau, sigma):
    """Condition the joint Gaussian of (y_1..y_i, y*) directly: cov = tau^2 X X' + sigma^2 I."""
    X = x[: i + 1]
    K = tau**2 * X @ X.T + sigma**2 * np.eye(i + 1)
    if i == 0:
        return 0.0, K[0, 0]
    A, b, c = K[:i, :i], K[:i, i], K[i, i]
    return b @ np.linalg.solve(A, y[:i]), c - b @ np.linalg.solve(A, b)


@pytest.mark.parametrize("sigma", [0.5, 0.0])
def test_predictive_matches_function_space_conditioning(sigma):
    tau, d = 0.8, 4
    x, _, y = prompts(N=d, tau=tau, sigma=sigma)  # N = d: for sigma = 0 the kernel matrix stays invertible
    mean, var = bayes.posterior_predictive(x, y, tau, sigma)
    for p in range(x.shape[0]):
        for i in range(x.shape[1]):
            m, v = function_space_predictive(x[p], y[p], i, tau, sigma)
            assert mean[p, i] == pytest.approx(m, abs=1e-8)
            assert var[p, i] == pytest.approx(v, abs=1e-8)


def test_batch_posterior_equals_sequential_conjugate_updates():
    tau, sigma = 0.8, 0.5
    x, _, y = prompts(tau=tau, sigma=sigma)
    mu, cov = bayes.posterior(x, y, tau, sigma)
    for p in range(x.shape[0]):
        m, S = np.zeros(4), tau**2 * np.eye(4)  # prior
        for i in range(x.shape[1]):
            np.testing.assert_allclose(mu[p, i], m, atol=1e-10)
            np.testing.assert_allclose(cov[p, i], S, atol=1e-10)
            xi = x[p, i]  # rank-one (Kalman) update with the point just seen
            gain = S @ xi / (xi @ S @ xi + sigma**2)
            m, S = m + gain * (y[p, i] - xi @ m), S - np.outer(gain, xi @ S)


def test_noiseless_is_min_norm_least_squares_and_recovers_w():
    d = 4
    x, w, y = prompts(N=8, d=d, sigma=0.0)
    mean, var = bayes.posterior_predictive(x, y, 1.0, 0.0)
    ls = bayes.least_squares(x, y)
    np.testing.assert_allclose(mean, ls, atol=1e-8)
    np.testing.assert_allclose(mean[:, d:], np.einsum("pnd,pd->pn", x, w)[:, d:], atol=1e-8)  # k >= d: exact
    assert np.all(var[:, d:] < 1e-10) and np.all(var[:, :d] > 1e-8)
    # min-norm: the least-squares w with fewer points than d has no component off the points' span
    mu, _ = bayes.posterior(x, y, 1.0, 0.0)
    k = 2
    resid = mu[:, k] - np.einsum("pdk,pk->pd", np.linalg.pinv(x[:, :k]), np.einsum("pkd,pd->pk", x[:, :k], mu[:, k]))
    np.testing.assert_allclose(resid, 0, atol=1e-8)


def test_noiseless_error_curve_by_monte_carlo():
    d, N = 5, 9
    x, _, y = prompts(P=6000, N=N, d=d, tau=1.0, sigma=0.0, seed=1)
    err = ((bayes.least_squares(x, y) - y) ** 2).mean(0) / d
    np.testing.assert_allclose(err, bayes.noiseless_error_curve(d, N), atol=0.04)


def test_ridge_is_the_bayes_mean_and_beats_least_squares_when_noisy():
    tau, sigma = 1.0, 1.0
    x, _, y = prompts(P=4000, N=8, d=5, tau=tau, sigma=sigma, seed=2)
    mean, var = bayes.posterior_predictive(x, y, tau, sigma)
    err_bayes, err_ls = ((mean - y) ** 2).mean(0), ((bayes.least_squares(x, y) - y) ** 2).mean(0)
    assert np.all(err_bayes[1:] < err_ls[1:])
    np.testing.assert_allclose(err_bayes, var.mean(0), rtol=0.08)  # the predictive variance is the expected error


def test_nearest_neighbours_and_averaging_by_hand():
    x = np.array([[[0.0], [1.0], [5.0], [1.2], [4.0]]])
    y = np.array([[10.0, 20.0, 30.0, 40.0, 50.0]])
    nn = bayes.nearest_neighbours(x, y, 3)
    assert nn[0, 0] == 0.0 and nn[0, 1] == 10.0 and nn[0, 2] == 15.0
    assert nn[0, 3] == pytest.approx(20.0)  # 3 nearest of x=1.2 among {0, 1, 5}: all three -> mean 20
    assert nn[0, 4] == pytest.approx((30 + 40 + 20) / 3)  # x=4: 5, 1.2, 1
    avg = bayes.averaging(x, y)
    assert avg[0, 2] == pytest.approx(5.0 * (0 * 10 + 1 * 20) / 2)

"""The exact Bayesian answer to in-context linear regression, and the classical baselines.

With prior w ~ N(0, tau^2 I) and y = X w + eps, eps ~ N(0, sigma^2 I), the posterior after the first
k points is N(mu_k, Sigma_k) with

    Sigma_k = sigma^2 (X_k'X_k + lambda I)^-1,  mu_k = (X_k'X_k + lambda I)^-1 X_k'y_k,  lambda = sigma^2 / tau^2,

(ridge regression), and the posterior predictive of y at x* is N(x*.mu_k, sigma^2 + x*' Sigma_k x*).
For sigma = 0 this is the limit lambda -> 0: mu_k = X_k^+ y_k (minimum-norm least squares) and
Sigma_k = tau^2 (I - X_k^+ X_k) (the prior restricted to the directions no point has measured).

Every function takes prompts x (P, N, d), y (P, N) and answers for all N queries at once: query i
(0-based) uses the i earlier points as its context. numpy float64 throughout.
"""
from __future__ import annotations

import numpy as np

PINV_RCOND = 1e-10


def _prefix_gram(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """X_k'X_k (P, N, d, d) and X_k'y_k (P, N, d) over the first k = 0..N-1 points."""
    outer = np.einsum("pni,pnj->pnij", x, x)
    xy = x * y[..., None]
    gram = np.cumsum(outer, axis=1) - outer  # exclusive prefix sums: points before i
    rhs = np.cumsum(xy, axis=1) - xy
    return gram, rhs


def posterior(x: np.ndarray, y: np.ndarray, tau: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior (mu_k (P, N, d), Sigma_k (P, N, d, d)) of w given the points before each query."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    P, N, d = x.shape
    if sigma > 0:
        gram, rhs = _prefix_gram(x, y)
        a = gram + (sigma**2 / tau**2) * np.eye(d)
        a_inv = np.linalg.inv(a)
        return np.einsum("pnij,pnj->pni", a_inv, rhs), sigma**2 * a_inv
    mu = np.zeros((P, N, d))
    cov = np.broadcast_to(tau**2 * np.eye(d), (P, N, d, d)).copy()
    for k in range(1, N):
        pinv = np.linalg.pinv(x[:, :k], rcond=PINV_RCOND)  # (P, d, k)
        mu[:, k] = np.einsum("pdk,pk->pd", pinv, y[:, :k])
        cov[:, k] = tau**2 * (np.eye(d) - pinv @ x[:, :k])
    return mu, cov


def posterior_predictive(x: np.ndarray, y: np.ndarray, tau: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (P, N) of the exact posterior predictive of each query y_i."""
    mu, cov = posterior(x, y, tau, sigma)
    x = np.asarray(x, np.float64)
    mean = np.einsum("pnd,pnd->pn", x, mu)
    var = sigma**2 + np.einsum("pni,pnij,pnj->pn", x, cov, x)
    return mean, np.maximum(var, 0.0)


def least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ordinary least squares (minimum-norm when underdetermined) on the earlier points; 0 with none."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    P, N, _ = x.shape
    pred = np.zeros((P, N))
    for k in range(1, N):
        w = np.einsum("pdk,pk->pd", np.linalg.pinv(x[:, :k], rcond=PINV_RCOND), y[:, :k])
        pred[:, k] = np.einsum("pd,pd->p", x[:, k], w)
    return pred


def nearest_neighbours(x: np.ndarray, y: np.ndarray, k_neighbours: int = 3) -> np.ndarray:
    """Mean y of the k nearest earlier points (all of them when fewer); 0 with none."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    P, N, _ = x.shape
    pred = np.zeros((P, N))
    for i in range(1, N):
        dist = ((x[:, :i] - x[:, i : i + 1]) ** 2).sum(-1)  # (P, i)
        m = min(k_neighbours, i)
        nearest = np.argsort(dist, axis=1, kind="stable")[:, :m]
        pred[:, i] = np.take_along_axis(y[:, :i], nearest, axis=1).mean(1)
    return pred


def averaging(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Garg et al.'s averaging estimator: w_hat = mean_j y_j x_j over the earlier points; 0 with none."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    _, rhs = _prefix_gram(x, y)
    count = np.arange(x.shape[1])[None, :, None]
    w_hat = rhs / np.maximum(count, 1)
    return np.einsum("pnd,pnd->pn", x, w_hat)


def noiseless_error_curve(d: int, n_points: int) -> np.ndarray:
    """Expected normalised error (1 - k/d)+ of the noiseless Bayes predictor after k = 0..N-1 points."""
    k = np.arange(n_points)
    return np.clip(1.0 - k / d, 0.0, None)

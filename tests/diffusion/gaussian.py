"""The exact denoiser of a Gaussian data distribution, for sampler tests with known answers."""
from __future__ import annotations

import torch


class BatchRNG:
    """Duck-typed stand-in for PerSampleRNG that draws the whole batch at once (fast for big N)."""

    def __init__(self, batch: int, seed: int = 0):
        self.batch = batch
        self.gen = torch.Generator().manual_seed(seed)

    def randn(self, *shape):
        return torch.randn((self.batch, *shape), generator=self.gen, dtype=torch.float64).float()


def random_gaussian(dim: int, seed: int = 0, eig: tuple[float, float] = (0.05, 1.5)):
    """A random N(mean, cov) whose covariance has eigenvalues evenly spread over ``eig``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    cov = q @ torch.diag(torch.linspace(*eig, dim, dtype=torch.float64)) @ q.T
    mean = 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)
    return mean, cov


def exact_denoiser(mean, cov, schedule, shape, name="image"):
    """denoiser(x, t) -> {name: (E[x0 | x_t], E[eps | x_t])} for x0 ~ N(mean, cov)."""
    dim = mean.numel()
    eye = torch.eye(dim, dtype=torch.float64)

    def denoise(x, t):
        xt = x[name].double().flatten(1)  # (B, d)
        alpha, sigma = (v.double()[0] for v in schedule.alpha_sigma(t[name][:1]))
        gain = alpha * cov @ torch.linalg.inv(alpha**2 * cov + sigma**2 * eye)
        x0 = mean + (xt - alpha * mean) @ gain.T
        eps = (xt - alpha * x0) / sigma
        return {name: (x0.float().view(-1, *shape), eps.float().view(-1, *shape))}

    return denoise

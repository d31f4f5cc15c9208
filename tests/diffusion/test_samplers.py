"""Every sampler, driven by the exact denoiser of a Gaussian, must reproduce its mean and covariance."""
import pytest
import torch

from ditlab.diffusion.paths import single_stream_path
from ditlab.diffusion.samplers import count_nfe, sample
from ditlab.diffusion.schedules import DDPMSchedule, FlowSchedule

from .gaussian import BatchRNG, exact_denoiser, random_gaussian

SHAPE = (1, 2, 2)  # a 4-dimensional "image"
N = 30_000

# Step counts where the discretisation bias is well below the tolerance (first-order methods
# shrink the covariance by ~5% at 100 steps on this target; Heun by ~2% at 40).
CASES = [
    # (schedule, method, steps, eta)
    ("ddpm-linear", "ddpm", 1000, 0.0),
    ("ddpm-linear", "ddim", 500, 0.0),
    ("ddpm-linear", "ddim", 500, 1.0),
    ("ddpm-cosine", "euler", 500, 0.0),
    ("ddpm-cosine", "heun", 100, 0.0),
    ("flow", "ddpm", 500, 0.0),
    ("flow", "ddim", 500, 0.5),
    ("flow", "euler", 500, 0.0),
    ("flow", "heun", 100, 0.0),
]


def make_schedule(name):
    if name == "flow":
        return FlowSchedule()
    return DDPMSchedule(name.split("-")[1], 1000)


@pytest.mark.parametrize("sched_name,method,steps,eta", CASES)
def test_sampler_reproduces_gaussian_moments(sched_name, method, steps, eta):
    schedule = make_schedule(sched_name)
    mean, cov = random_gaussian(4, seed=1)
    denoise = exact_denoiser(mean, cov, schedule, SHAPE)
    rng = BatchRNG(N, seed=2)
    path = single_stream_path("image", schedule.time_grid(steps))
    x = {"image": rng.randn(*SHAPE)}
    out = sample(denoise, x, path, schedule, rng, method=method, eta=eta)["image"].double().flatten(1)
    emp_mean = out.mean(0)
    emp_cov = torch.cov(out.T)
    # Monte-Carlo standard errors: mean ~ sqrt(1.5 / N) = 0.006; cov entries ~ 1.5 * sqrt(2 / N) = 0.011.
    assert torch.allclose(emp_mean, mean, atol=0.03), (emp_mean, mean)
    assert torch.allclose(emp_cov, cov, atol=0.05), (emp_cov - cov)


def test_wrong_denoiser_is_detected():
    """The moment test has teeth: a denoiser with the wrong covariance fails it."""
    schedule = FlowSchedule()
    mean, cov = random_gaussian(4, seed=1)
    denoise = exact_denoiser(mean, 0.7 * cov, schedule, SHAPE)
    rng = BatchRNG(N, seed=2)
    path = single_stream_path("image", schedule.time_grid(50))
    out = sample(denoise, {"image": rng.randn(*SHAPE)}, path, schedule, rng, method="euler")["image"]
    emp_cov = torch.cov(out.double().flatten(1).T)
    assert not torch.allclose(emp_cov, cov, atol=0.05)


def test_nfe_counts():
    schedule = FlowSchedule()
    path = single_stream_path("image", schedule.time_grid(10))
    assert count_nfe(path, "euler") == 10
    assert count_nfe(path, "heun") == 19  # no correction on the last step into t = 0


def test_unknown_sampler():
    schedule = FlowSchedule()
    path = single_stream_path("image", schedule.time_grid(2))
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(lambda x, t: x, {"image": torch.zeros(1, 1, 2, 2)}, path, schedule, BatchRNG(1), method="rk4")


@pytest.mark.parametrize("method", ["ddpm", "heun"])
def test_samplers_handle_token_streams(method):
    """Token-set streams (B, N, C) go through the same samplers with the same exactness."""
    schedule = FlowSchedule()
    mean, cov = random_gaussian(4, seed=3)
    denoise = exact_denoiser(mean, cov, schedule, (2, 2), name="points")
    rng = BatchRNG(N, seed=4)
    path = single_stream_path("points", schedule.time_grid(500 if method == "ddpm" else 100))
    out = sample(denoise, {"points": rng.randn(2, 2)}, path, schedule, rng, method=method)["points"]
    assert out.shape == (N, 2, 2)
    flat = out.double().flatten(1)
    assert torch.allclose(flat.mean(0), mean, atol=0.03) and torch.allclose(torch.cov(flat.T), cov, atol=0.05)

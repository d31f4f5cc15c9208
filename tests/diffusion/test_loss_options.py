"""Issue 18: flow x0-prediction with a velocity loss (JiT), Min-SNR-gamma weights, the training time shift."""
import math

import pytest
import torch

from ditlab.config import DiffusionConfig
from ditlab.diffusion.objectives import Objective, build_objective
from ditlab.diffusion.schedules import DDPMSchedule, FlowSchedule, shift_time
from ditlab.diffusion.weighting import min_snr_weight


def one_loss(obj, pred, x0, eps, t):
    """Objective.loss of a 'network' that returns ``pred`` whatever its input, one image stream."""
    return obj.loss(lambda x_t, t_: {"image": pred}, {"image": x0}, {"image": t}, {"image": eps}, {"image": 1})


def test_flow_x0_prediction_inverts():
    """to_x0_eps of flow + x0 recovers (x0, eps) from the exact target wherever t >= loss_t_min."""
    obj = build_objective(DiffusionConfig(process="flow", prediction="x0"))
    assert obj.prediction == "x0"
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0.05, 0.3, 0.7, 1.0]).view(-1, 1, 1, 1)
    x_t = obj.noised(x0, eps, t)
    x0_hat, eps_hat = obj.to_x0_eps(obj.target(x0, eps, t), x_t, t)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps, atol=1e-5, rtol=1e-5)


def test_flow_x0_eps_uses_the_clamp_below_t_min():
    """eps_hat = (x_t - (1 - t) x0_hat) / max(t, t_min): finite and damped at t -> 0, as in JiT."""
    obj = Objective(FlowSchedule(), "x0", loss_t_min=0.05)
    x_t, x0_hat = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    _, eps = obj.to_x0_eps(x0_hat, x_t, torch.full((1, 1, 1, 1), 0.01))
    assert eps.item() == pytest.approx(1 / 0.05)


def test_velocity_loss_is_the_x0_error_over_t_squared():
    """loss_space=velocity for x0 prediction: |v_hat - v|^2 with v_hat = (x_t - x0_hat) / t, v = eps - x0,
    i.e. the x0 error weighted 1 / max(t, t_min)^2; native is the plain x0 error."""
    x0, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    pred = x0 + 0.1 * torch.randn_like(x0)
    t = torch.tensor([0.02, 0.25, 0.8])
    native = one_loss(Objective(FlowSchedule(), "x0"), pred, x0, eps, t)
    velocity = one_loss(Objective(FlowSchedule(), "x0", loss_space="velocity", loss_t_min=0.05), pred, x0, eps, t)
    torch.testing.assert_close(native, (pred - x0).pow(2).flatten(1).mean(1))
    torch.testing.assert_close(velocity, native / torch.tensor([0.05, 0.25, 0.8]) ** 2)
    # for t >= t_min it is literally the implied velocity against eps - x0
    t_px = t.view(-1, 1, 1, 1)
    x_t = (1 - t_px) * x0 + t_px * eps
    v_hat = (x_t - pred) / t_px
    torch.testing.assert_close(velocity[1:], (v_hat - (eps - x0)).pow(2).flatten(1).mean(1)[1:], rtol=1e-4, atol=1e-6)


def test_velocity_loss_of_a_velocity_prediction_is_native():
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    pred, t = torch.randn(2, 1, 4, 4), torch.tensor([0.3, 0.9])
    a = one_loss(Objective(FlowSchedule(), "velocity"), pred, x0, eps, t)
    b = one_loss(Objective(FlowSchedule(), "velocity", loss_space="velocity"), pred, x0, eps, t)
    assert torch.equal(a, b)


def test_velocity_loss_space_refused_for_ddpm():
    with pytest.raises(ValueError, match="diffusion.loss_space"):
        build_objective(DiffusionConfig(process="ddpm", prediction="x0", loss_space="velocity"))


def test_flow_eps_stays_refused():
    with pytest.raises(ValueError, match="does not fit"):
        build_objective(DiffusionConfig(process="flow", prediction="eps"))


@pytest.mark.parametrize("schedule,prediction", [
    (DDPMSchedule("linear"), "eps"), (DDPMSchedule("cosine"), "x0"), (DDPMSchedule("linear"), "v"),
    (FlowSchedule(), "velocity"), (FlowSchedule(), "x0"),
])
def test_min_snr_puts_min_snr_gamma_on_the_x0_error(schedule, prediction):
    """Whatever the target, the weighted loss of a prediction whose x0 is off by dx0 equals
    min(SNR, gamma) |dx0|^2: the parameterisations are comparable (docstring of ditlab.diffusion.weighting)."""
    gamma = 5.0
    obj = Objective(schedule, prediction, loss_weighting="min_snr", min_snr_gamma=gamma)
    x0, eps = torch.randn(4, 1, 4, 4, dtype=torch.float64).float(), torch.randn(4, 1, 4, 4)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9])
    t_px = t.view(-1, 1, 1, 1)
    alpha, sigma = schedule.alpha_sigma(t_px)
    x_t = alpha * x0 + sigma * eps
    dx0 = 0.01 * torch.randn_like(x0)
    x0_wrong = x0 + dx0
    eps_wrong = (x_t - alpha * x0_wrong) / sigma  # the same x_t explained by the wrong x0
    pred = obj.target(x0_wrong, eps_wrong, t_px)  # what a network with that x0 error outputs
    loss = one_loss(obj, pred, x0, eps, t)
    snr = (alpha / sigma).flatten() ** 2
    expected = torch.minimum(snr, torch.tensor(gamma)) * dx0.pow(2).flatten(1).mean(1)
    torch.testing.assert_close(loss, expected, rtol=2e-3, atol=1e-9)


def test_min_snr_weights_finite_at_the_ends():
    alpha, sigma = torch.tensor([0.0, 1.0, 0.5]), torch.tensor([1.0, 0.0, 0.5])
    for target in ("eps", "x0", "v", "velocity"):
        w = min_snr_weight(alpha, sigma, target, 5.0)
        assert torch.isfinite(w).all(), target
    assert min_snr_weight(alpha, sigma, "eps", 5.0)[0] == 1.0  # pure noise: min(SNR, g) / SNR -> 1
    with pytest.raises(ValueError, match="no Min-SNR weight"):
        min_snr_weight(alpha, sigma, "score", 5.0)


def test_defaults_are_the_unweighted_loss_bitwise():
    """The default options take the old code path: loss == mean squared error, bitwise."""
    x0, eps, pred = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([0.3, 0.7])
    obj = build_objective(DiffusionConfig(process="flow", prediction="velocity"))
    expected = ((pred.float() - (eps - x0).float()) ** 2).flatten(1).sum(1) / (3 * 16)
    assert torch.equal(one_loss(obj, pred, x0, eps, t), expected)


def test_training_time_shift():
    """diffusion.time_shift warps the drawn t by s t / (1 + (s - 1) t): same draws, mapped; more noise for s > 1."""
    base = build_objective(DiffusionConfig(process="flow", prediction="velocity")).schedule
    shifted = build_objective(DiffusionConfig(process="flow", prediction="velocity", time_shift=3.0)).schedule
    t0 = base.sample_time((10_000,), "cpu", torch.Generator().manual_seed(0))
    t3 = shifted.sample_time((10_000,), "cpu", torch.Generator().manual_seed(0))
    torch.testing.assert_close(t3, shift_time(t0, 3.0).clamp(1e-5, 1.0))
    assert t3.median() > 0.7 and abs(t0.median().item() - 0.5) < 0.02  # median 3 * 0.5 / 2 = 0.75
    assert shift_time(1.0, 3.0) == 1.0 and shift_time(0.0, 3.0) == 0.0
    default = build_objective(DiffusionConfig(process="flow", prediction="velocity")).schedule
    assert torch.equal(default.sample_time((100,), "cpu", torch.Generator().manual_seed(1)),
                       torch.rand(100, generator=torch.Generator().manual_seed(1)).clamp(1e-5, 1.0))
    with pytest.raises(ValueError, match="diffusion.time_shift"):
        build_objective(DiffusionConfig(process="ddpm", time_shift=2.0))
    assert not math.isclose(shift_time(0.5, 0.5), 0.5)

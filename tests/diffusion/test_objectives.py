import pytest
import torch

from ditlab.config import DiffusionConfig
from ditlab.diffusion.objectives import Objective, build_objective, expand_time
from ditlab.diffusion.schedules import DDPMSchedule, FlowSchedule


@pytest.mark.parametrize("schedule,prediction", [
    (DDPMSchedule("linear"), "eps"), (DDPMSchedule("linear"), "x0"), (DDPMSchedule("cosine"), "v"),
    (FlowSchedule(), "velocity"),
])
def test_target_inverts_to_x0_and_eps(schedule, prediction):
    """Feeding the exact target back through to_x0_eps recovers the clean data and the noise."""
    obj = Objective(schedule, prediction)
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0.05, 0.3, 0.7, 0.95]).view(-1, 1, 1, 1)
    x_t = obj.noised(x0, eps, t)
    x0_hat, eps_hat = obj.to_x0_eps(obj.target(x0, eps, t), x_t, t)
    torch.testing.assert_close(x0_hat, x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(eps_hat, eps, atol=2e-4, rtol=1e-4)


def test_ddpm_schedule_matches_discrete_definition():
    s = DDPMSchedule("linear", 1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    k = torch.tensor([1, 10, 500, 1000])
    alpha, sigma = s.alpha_sigma(k.float() / 1000)
    torch.testing.assert_close(alpha.double() ** 2, alpha_bar[k - 1], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(4), atol=1e-6, rtol=0)
    assert s.alpha_sigma(torch.zeros(1))[0].item() == 1.0  # t = 0 is clean
    t = s.sample_time((10_000,), "cpu")
    assert t.min() >= 1 / 1000 and t.max() <= 1.0 and ((t * 1000).round() - t * 1000).abs().max() < 1e-4


def test_cosine_and_flow_grids():
    assert DDPMSchedule("cosine").time_grid(10)[0] == 1.0 and DDPMSchedule("cosine").time_grid(10)[-1] == 0.0
    g = FlowSchedule().time_grid(4)
    torch.testing.assert_close(g, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    t = FlowSchedule("logit_normal").sample_time((20_000,), "cpu")
    assert 0 < t.min() and t.max() <= 1 and abs(t.median().item() - 0.5) < 0.02


def test_loss_mask_only_noised_tokens_count():
    """Clean tokens (t = 0) carry no loss; the explicit mask removes more; the rest is plain MSE."""
    obj = Objective(FlowSchedule(), "velocity")
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([[0.0, 0.5, 0.5, 0.5], [0.3, 0.3, 0.0, 0.0]])  # per token (patch 2 -> 4 tokens)
    target = eps - x0

    def perfect_except_token0(x_t, t_):  # exact everywhere except a huge error on token 0 (top-left patch)
        out = target.clone()
        out[:, :, :2, :2] += 100.0
        return {"image": out}

    loss = obj.loss(perfect_except_token0, {"image": x0}, {"image": t}, {"image": eps}, {"image": 2})
    assert loss[0].item() == 0.0  # token 0 of sample 0 is clean: no loss there
    assert loss[1].item() > 1000  # token 0 of sample 1 is noised
    mask = {"image": torch.tensor([[True, True, True, True], [False, True, True, True]])}
    loss = obj.loss(perfect_except_token0, {"image": x0}, {"image": t}, {"image": eps}, {"image": 2}, mask)
    assert loss.abs().max().item() == 0.0


def test_expand_time_per_token():
    t = torch.arange(4.0).view(1, 4)
    px = expand_time(t, torch.zeros(1, 3, 4, 4), 2)
    assert px.shape == (1, 1, 4, 4) and px[0, 0, 0, 3] == 1 and px[0, 0, 3, 0] == 2


def test_prediction_must_fit_process():
    with pytest.raises(ValueError, match="does not fit"):
        build_objective(DiffusionConfig(process="flow", prediction="eps"))
    assert build_objective(DiffusionConfig(process="flow", prediction="v")).prediction == "velocity"


def test_token_stream_loss_per_token_levels():
    obj = Objective(FlowSchedule(), "velocity")
    x0, eps = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    t = torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.5], [0.3] * 5])  # sample 0: two clean context tokens

    def perfect(x_t, t_):
        out = eps - x0
        out[:, :2] += 10.0  # wrong on the first two tokens only
        return {"pts": out}

    loss = obj.loss(perfect, {"pts": x0}, {"pts": t}, {"pts": eps}, {"pts": 1})
    assert loss[0].item() == 0.0 and loss[1].item() > 10  # clean tokens carry no loss
    assert expand_time(torch.rand(2), x0, 1).shape == (2, 1, 1)

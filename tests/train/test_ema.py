"""EMA: the recurrence, the warm-up, buffers, fp32 copies, state round trips and wrappers."""
import contextlib

import pytest
import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import nn

from ditlab.train.checkpoint import save_checkpoint
from ditlab.models.wrappers import strip_wrapper_prefix, unwrap_model
from ditlab.train.ema import EMA


def set_params(model: nn.Module, value: float):
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.fill_(value + i)


def test_matches_hand_recurrence_without_warmup():
    model = nn.Linear(3, 2)
    set_params(model, 1.0)
    ema = EMA(model, decay=0.9, warmup=False)
    expected = [1.0, 2.0]  # weight, bias start as copies
    for step, value in enumerate([3.0, -2.0, 0.5, 10.0]):
        set_params(model, value)
        ema.update(model, step)
        expected = [0.9 * e + 0.1 * (value + i) for i, e in enumerate(expected)]
    torch.testing.assert_close(ema.module.weight, torch.full((2, 3), expected[0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(ema.module.bias, torch.full((2,), expected[1]), rtol=0, atol=1e-6)


def test_warmup_formula_and_value():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.999)
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(10) == pytest.approx(11 / 20)
    assert ema.decay_at(10**6) == 0.999
    assert EMA(model, decay=0.999, warmup=False).decay_at(0) == 0.999
    set_params(model, 0.0)
    ema = EMA(model, decay=0.999)
    expected = 0.0
    for step in range(5):
        set_params(model, 1.0)
        ema.update(model, step)
        d = min(0.999, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * 1.0
    torch.testing.assert_close(ema.module.weight, torch.full((2, 2), expected), rtol=0, atol=1e-6)


def test_buffers_copied_not_averaged():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = EMA(model, decay=0.99)
    model.train()
    model(torch.randn(8, 3) * 5 + 2)
    ema.update(model, step=1000)
    bn, ebn = model[1], ema.module[1]
    torch.testing.assert_close(ebn.running_mean, bn.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(ebn.running_var, bn.running_var, rtol=0, atol=0)
    assert ebn.num_batches_tracked.item() == 1


def test_copy_is_fp32_eval_and_frozen():
    model = nn.Linear(4, 4).to(torch.bfloat16).train()
    ema = EMA(model, decay=0.5)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training and model.training
    set_params(model, 2.0)
    ema.update(model, step=100)  # bf16 model into fp32 average
    assert ema.module.weight.dtype == torch.float32


def test_state_dict_round_trip():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    ema = EMA(model, decay=0.9)
    set_params(model, 5.0)
    ema.update(model, step=3)
    other = EMA(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)), decay=0.9)
    other.load_state_dict({"module." + k: v for k, v in ema.state_dict().items()})
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(other.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(RuntimeError):
        other.load_state_dict({"0.weight": torch.zeros(4, 3)})  # strict: missing keys


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch.compile's imports
def test_compiled_model_unwrapped():
    model = nn.Linear(3, 3)
    compiled = torch.compile(model)  # not called, so nothing is actually compiled
    ema = EMA(compiled, decay=0.5, warmup=False)
    assert set(ema.state_dict()) == {"weight", "bias"}
    set_params(model, 4.0)
    ema.update(compiled, step=0)
    assert unwrap_model(compiled) is model
    assert strip_wrapper_prefix("module._orig_mod.blocks.0.w") == "blocks.0.w"


@contextlib.contextmanager
def single_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_ddp_model(tmp_path):
    with single_process_group(tmp_path):
        model = nn.Linear(3, 2)
        ddp = nn.parallel.DistributedDataParallel(model)
        ema = EMA(ddp, decay=0.5, warmup=False)
        assert set(ema.state_dict()) == {"weight", "bias"}
        set_params(model, 1.0)
        before = ema.module.weight.clone()
        ema.update(ddp, step=0)
        torch.testing.assert_close(ema.module.weight, 0.5 * before + 0.5)
        folder = save_checkpoint(tmp_path / "run", 1, ddp, ema=ema)
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            assert set(f.keys()) == {"weight", "bias"}


class _Moments(nn.Module):
    """Two weights that hold the training time s and s^2: their EMA is the first and second moment of the times
    the average weighs."""

    def __init__(self):
        super().__init__()
        self.t = nn.Parameter(torch.zeros(()))
        self.t2 = nn.Parameter(torch.zeros(()))


@pytest.mark.parametrize("decay,steps,warmup,every", [(0.99, 1500, True, 1), (0.99, 1500, False, 1),
                                                      (0.995, 2000, True, 3), (0.9, 40, False, 1),
                                                      (0.999, 30, True, 1), (0.999, 30, True, 2)])
def test_classic_sigma_rel_is_the_width_the_ema_averages_over(decay, steps, warmup, every):
    """classic_sigma_rel against the EMA class itself, updated as the trainer updates it (after every ``every``-th
    step, 1-based) on weights equal to the step and its square: the average's spread of training times, over the
    run's length, is the width the helper computes, the warm-up ramp and the initial weights included."""
    from ditlab.train.ema import classic_sigma_rel

    model = _Moments()
    ema = EMA(model, decay, warmup=warmup)  # fp32, as the trainer keeps it
    for s in range(1, steps + 1):
        with torch.no_grad():
            model.t.fill_(s / steps)
            model.t2.fill_((s / steps) ** 2)
        if s % every == 0:
            ema.update(model, s)
    mean, second = float(ema.module.t), float(ema.module.t2)
    assert classic_sigma_rel(decay, steps, warmup, every) == pytest.approx((second - mean ** 2) ** 0.5, rel=1e-3)


def test_classic_sigma_rel_with_the_warm_up_is_a_power_profile_until_the_decay_is_reached():
    """The ramp (1 + s) / (10 + s) ~ (1 - 1/s)^9 is the power EMA of gamma ~ 8 (sigma_rel 0.090) until it reaches
    the decay (0.999: step 8,990), so a 420-s run's classic EMA at 0.999 is ~0.09 wide, not the 0.11 of the decay
    alone, and later it narrows as 1,000 steps over the run's length."""
    from ditlab.train.ema import classic_sigma_rel, sigma_rel_from_gamma

    assert classic_sigma_rel(0.999, 9008) == pytest.approx(sigma_rel_from_gamma(8.0), abs=2e-3)
    assert classic_sigma_rel(0.999, 9008, warmup=False) == pytest.approx(0.999 ** 0.5 / 0.001 / 9008, rel=1e-2)
    assert classic_sigma_rel(0.999, 100_000) == pytest.approx(0.999 ** 0.5 / 0.001 / 100_000, rel=2e-2)
    assert classic_sigma_rel(1.0, 50, warmup=False) == 0.0  # never moves: all weight on the start
    with pytest.raises(ValueError, match="step and every must be >= 1"):
        classic_sigma_rel(0.999, 0)

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

"""train.float8: which layers convert, the errors that name the key, and a CPU training run through torchao's
emulated fp8 GEMMs (same parameters, same checkpoint keys, the EMA stays plain)."""
import sys

import pytest
import torch
from torch import nn

from ditlab.train.checkpoint import load_weights
from ditlab.train.float8 import check_float8, convert_float8, float8_candidates
from ditlab.train.trainer import Trainer
from tests.train.test_trainer import losses, tiny_cfg

torchao = pytest.importorskip("torchao.float8", reason="train.float8 needs torchao (in the test extra)")
from torchao.float8.float8_linear import Float8Linear  # noqa: E402


def _model(hidden=32, mlp_ratio=4.0):
    from ditlab.config import load_config
    from ditlab.tasks.registry import build_model
    cfg = load_config(None, ["model.arch=DiT-S/4", f"model.hidden_size={hidden}", "model.depth=2", "model.num_heads=2",
                             f"model.mlp_ratio={mlp_ratio}", "model.num_classes=4", "data.image_size=16"])
    return build_model(cfg, {"image_size": 16, "channels": 3, "num_classes": 4})


def test_only_the_token_wise_linears_convert():
    model = _model()
    converted, skipped = float8_candidates(model)
    assert skipped == []
    assert converted and all((".attn." in n or ".mlp." in n) for n in converted)
    assert {n.rsplit(".", 1)[1] for n in converted} == {"qkv", "proj", "fc1", "fc2"}
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    assert convert_float8(model, "tensorwise", "cpu") == converted
    kinds = {n: type(m) for n, m in model.named_modules()}
    assert all(kinds[n] is Float8Linear for n in converted)
    # adaLN, the timestep / label embedders and the final layer keep plain Linear layers
    others = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in converted]
    assert others and all(kinds[n] is nn.Linear for n in others)
    assert any("adaLN" in n for n in others) and any(n.startswith("final") for n in others)
    # the same Parameter objects and state-dict keys: optimizer, EMA and checkpoints are untouched
    assert list(model.parameters()) == params and all(a is b for a, b in zip(model.parameters(), params))
    assert model.state_dict().keys() == plain.keys()


def test_rows_not_divisible_by_16_are_padded():
    """The weight gradient's inner dimension is the step's rows (batch x tokens); CUDA's scaled GEMM needs it
    divisible by 16, so the conversion asks torchao to pad (the CPU emulation would not catch a missing pad)."""
    from ditlab.models.mlp import Mlp
    mlp = Mlp(32, 64)
    convert_float8(mlp, "tensorwise", "cpu")
    assert mlp.fc1.config.pad_inner_dim and mlp.fc2.config.pad_inner_dim
    out = mlp(torch.randn(1, 17, 32))  # 17 rows
    out.sum().backward()
    assert torch.isfinite(mlp.fc1.weight.grad).all()


def test_widths_not_divisible_by_16_are_skipped_and_nothing_left_is_an_error():
    model = _model(hidden=24, mlp_ratio=2.0)
    converted, skipped = float8_candidates(model)
    assert converted == [] and skipped
    with pytest.raises(ValueError, match="train.float8=tensorwise.*divisible by 16"):
        convert_float8(model, "tensorwise", "cpu")


def test_errors_name_the_key(monkeypatch):
    with pytest.raises(ValueError, match="train.float8 must be one of off, tensorwise, rowwise"):
        check_float8("fp8", "cpu")
    check_float8("off", "cuda")  # off needs nothing
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(RuntimeError, match=r"train.float8=rowwise needs fp8 tensor cores.*A100 has 8.0"):
        check_float8("rowwise", "cuda")
    monkeypatch.setitem(sys.modules, "torchao.float8", None)  # import fails as if torchao were missing
    with pytest.raises(RuntimeError, match=r"train.float8=tensorwise needs torchao"):
        check_float8("tensorwise", "cpu")


def test_forward_is_close_to_the_plain_layers():
    from ditlab.models.mlp import Mlp
    torch.manual_seed(0)
    plain = Mlp(64, 256)
    fp8 = Mlp(64, 256)
    fp8.load_state_dict(plain.state_dict())
    convert_float8(fp8, "rowwise", "cpu")
    assert isinstance(fp8.fc1, Float8Linear)
    x = torch.randn(2, 50, 64)
    a, b = plain(x), fp8(x)
    rel = ((a - b).norm() / a.norm()).item()
    assert 0 < rel < 0.1  # fp8 rounding changes the output, by a few per cent at most
    b.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fp8.parameters())


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_training_run_in_float8(tiny_data, tmp_path, recipe):
    run = tmp_path / recipe
    trainer = Trainer(tiny_cfg(tiny_data, run, "train.steps=6", f"train.float8={recipe}"), progress=False)
    assert trainer.float8_layers
    assert not any(isinstance(m, Float8Linear) for m in trainer.ema.module.modules())  # the EMA stays plain
    assert trainer.run() == 0
    got = losses(run)
    assert len(got) == 6 and all(torch.isfinite(torch.tensor(got)))
    plain_run = tmp_path / "plain"
    Trainer(tiny_cfg(tiny_data, plain_run, "train.steps=6"), progress=False).run()
    assert load_weights(run, "ema").keys() == load_weights(plain_run, "ema").keys()
    first = losses(plain_run)[0]
    assert abs(got[0] - first) < 0.1 * abs(first)  # the same weights and noise, fp8 GEMMs
    # a float8 run resumes (the converted model loads its own checkpoint) and continues
    assert Trainer(tiny_cfg(tiny_data, run, "train.steps=8", f"train.float8={recipe}"), resume=True,
                   progress=False).run() == 0
    assert len(losses(run)) == 8

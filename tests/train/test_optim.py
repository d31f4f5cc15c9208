import pytest
import torch

from ditlab.config import OptimConfig
from ditlab.train.optim import build_optimizer, lr_at, set_lr


def test_warmup_then_constant():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(500, cfg, progress=0.9) == 1e-3


@pytest.mark.parametrize("decay,mid", [("cosine", 0.5 * (1e-3 + 1e-4)), ("linear", 0.5 * (1e-3 + 1e-4))])
def test_decay_to_min_ratio(decay, mid):
    cfg = OptimConfig(lr=1e-3, warmup_steps=0, decay=decay, min_lr_ratio=0.1)
    assert lr_at(1, cfg, progress=0.0) == pytest.approx(1e-3)
    assert lr_at(1, cfg, progress=0.5) == pytest.approx(mid)
    assert lr_at(1, cfg, progress=1.0) == pytest.approx(1e-4)
    assert lr_at(1, cfg, progress=3.0) == pytest.approx(1e-4)  # clamped past the end


def test_set_lr_changes_the_update():
    model = torch.nn.Linear(2, 1)
    opt = build_optimizer(model, OptimConfig(lr=1e-3), torch.device("cpu"))
    set_lr(opt, 0.5)
    assert opt.param_groups[0]["lr"] == 0.5

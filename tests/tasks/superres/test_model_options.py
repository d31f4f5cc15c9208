"""The model.* architecture options reach the super-resolution network in every injection mode."""
import pytest

from ditlab.config import load_config
from ditlab.models.mlp import SwiGLU
from ditlab.tasks.superres.model import build_superres_model


@pytest.mark.parametrize("injection", ["tokens", "cross", "branch", "adaln"])
def test_superres_model_takes_the_architecture_options(injection):
    tiny = ["model.hidden_size=32", "model.depth=2", "model.num_heads=2", "task.kind=superres",
            f"task.cond_injection={injection}"]
    plain = load_config(None, tiny)
    cfg = load_config(None, tiny + ["model.mlp=swiglu", "model.norm=rmsnorm", "model.long_skips=true"])
    model = build_superres_model(cfg.model, 32, 3, 2, cfg.task)
    base = build_superres_model(plain.model, 32, 3, 2, plain.task)
    assert all(isinstance(b.mlp, SwiGLU) for b in model.blocks)
    assert model.long_skips is not None and base.long_skips is None
    assert type(model.blocks[0].norm1) is not type(base.blocks[0].norm1)  # RMSNorm, not LayerNorm

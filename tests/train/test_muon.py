"""optim.name=muon: Muon (torch.optim.Muon) for the transformer blocks' matrices, AdamW for the rest, one lr
schedule; training, resume and checkpoints as with AdamW, and the settings it cannot take refused by name."""
import json
import os

import pytest
import torch

from ditlab.config import OptimConfig, load_config
from ditlab.configlib import ConfigError
from ditlab.models.dit import DiT, StreamSpec
from ditlab.train.checkpoint import CheckpointError, load_weights
from ditlab.train.optim import MuonAdamW, build_optimizer, muon_parameters, set_lr
from ditlab.train.trainer import Trainer
from tests.train.test_trainer import losses, tiny_cfg

MUON = ["optim.name=muon", "optim.lr=2e-3"]


def tiny_model():
    torch.manual_seed(0)
    model = DiT([StreamSpec("image", 3, 8, 2)], hidden_size=32, depth=2, num_heads=2, num_classes=4)
    with torch.no_grad():  # adaLN-Zero and the zero output layer would leave every block's gradient zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_muon_takes_the_blocks_matrices_and_adamw_everything_else():
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-3), torch.device("cpu"))
    assert isinstance(opt, MuonAdamW)
    muon = [p for g in opt.parts["muon"].param_groups for p in g["params"]]
    adamw = [p for g in opt.parts["adamw"].param_groups for p in g["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in muon} == {n for n, p in model.named_parameters()
                                            if n.startswith("blocks.") and n.endswith(".weight") and p.ndim == 2}
    assert all(p.ndim == 2 for p in muon)
    assert {id(p) for p in muon}.isdisjoint(id(p) for p in adamw)
    assert len(muon) + len(adamw) == len(list(model.parameters()))  # every parameter, once
    assert any(names[id(p)].startswith("final.") for p in adamw)  # the output layer stays with AdamW
    assert [p for p in muon_parameters(model)] == muon


def test_one_lr_reaches_both_parts_and_a_step_moves_both():
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-3), torch.device("cpu"))
    set_lr(opt, 0.25)
    assert all(g["lr"] == 0.25 for part in opt.parts.values() for g in part.param_groups)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = {"image": torch.randn(2, 3, 8, 8)}
    out = model(x, {"image": torch.rand(2)}, labels=torch.tensor([0, 1]))["image"]
    (out - 1).square().mean().backward()
    opt.step()
    opt.zero_grad()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert "blocks.0.attn.qkv.weight" in moved and "final.image.linear.weight" in moved
    assert all(p.grad is None for p in model.parameters())


def test_training_resumes_bitwise_and_the_loss_falls(tiny_data, tmp_path):
    straight = tmp_path / "straight"
    assert Trainer(tiny_cfg(tiny_data, straight, "train.steps=10", *MUON), progress=False).run() == 0
    split = tmp_path / "split"
    assert Trainer(tiny_cfg(tiny_data, split, "train.steps=5", *MUON), progress=False).run() == 0
    assert Trainer(tiny_cfg(tiny_data, split, "train.steps=10", *MUON), resume=True, progress=False).run() == 0
    assert losses(straight) == losses(split)  # bitwise: Muon's momentum buffers came back from the checkpoint
    a, b = load_weights(straight, "model"), load_weights(split, "model")
    assert all(torch.equal(a[k], b[k]) for k in a)

    run = tmp_path / "falls"
    Trainer(tiny_cfg(tiny_data, run, "train.steps=60", "model.attn_dropout=0.0", "diffusion.process=flow",
                     "diffusion.prediction=velocity", *MUON), progress=False).run()
    values = losses(run)
    assert sum(values[-10:]) < 0.8 * sum(values[:10]), (values[:10], values[-10:])


def test_resuming_with_the_other_optimizer_is_an_error_that_says_so(tiny_data, tmp_path):
    run = tmp_path / "r"
    Trainer(tiny_cfg(tiny_data, run, "train.steps=5", *MUON), progress=False).run()
    with pytest.raises(CheckpointError, match="Muon \\+ AdamW state .*optim.name=adamw"):
        Trainer(tiny_cfg(tiny_data, run, "train.steps=10"), resume=True, progress=False)
    other = tmp_path / "o"
    Trainer(tiny_cfg(tiny_data, other, "train.steps=5"), progress=False).run()
    with pytest.raises(CheckpointError, match="optim.name=muon needs the 'muon' part.*single optimizer"):
        Trainer(tiny_cfg(tiny_data, other, "train.steps=10", *MUON), resume=True, progress=False)


@pytest.mark.parametrize("overrides,message", [
    (["optim.muon_momentum=0.9"], "apply to optim.name=muon"),
    (["optim.name=muon", "optim.muon_momentum=1.0"], "must lie in \\[0, 1\\)"),
    (["optim.name=muon", "train.precision=fp16"], "fp16's gradient scaler"),
    (["optim.name=lion"], "optim.name"),
])
def test_settings_muon_cannot_take_are_refused_by_name(overrides, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        load_config(None, overrides)


def test_the_speedrun_study_has_a_muon_variant():
    import yaml

    spec = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "ablations",
                                            "speedrun.yaml")))
    assert "optim.name=muon" in spec["variants"]["muon"]["overrides"]
    json.dumps(spec)  # plain data

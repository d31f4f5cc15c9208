"""Two-stage training into a model with a context set (issue 4): init_from a model without
cross-attention. The loaded model's behaviour is the starting point and the new pathway learns."""
import pytest
import torch

from ditlab.models.dit import DiT, StreamSpec
from ditlab.train.checkpoint import save_checkpoint
from ditlab.train.init_from import init_from

STREAMS = [StreamSpec("image", 3, 8, patch_size=2)]


def model(context_dim=None, seed=0) -> DiT:
    torch.manual_seed(seed)
    m = DiT(STREAMS, hidden_size=32, depth=2, num_heads=2, num_classes=3, context_dim=context_dim)
    with torch.no_grad():  # leave adaLN-Zero's start so that every block does something
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.fixture
def stage1(tmp_path):
    m = model()
    save_checkpoint(tmp_path / "stage1", 1, m, ema=m)
    return m, tmp_path / "stage1"


def inputs(batch=4):
    g = torch.Generator().manual_seed(1)
    x = {"image": torch.randn(batch, 3, 8, 8, generator=g)}
    t = {"image": torch.rand(batch, generator=g)}
    return x, t, torch.tensor([0, 1, 2, 0])


def test_context_model_starts_as_the_loaded_model_and_its_new_pathway_learns(stage1, capsys):
    old, path = stage1
    new = model(context_dim=8, seed=5)
    report = init_from(new, str(path))
    assert report["unexpected"] == []
    assert "blocks.0.adaLN.weight" in report["widened"] and "blocks.1.adaLN.bias" in report["widened"]
    assert "blocks.0.cross_attn.q.weight" in report["fresh"] and "null_context" in report["fresh"]
    assert "widened" in capsys.readouterr().out
    sd_old, sd_new = old.state_dict(), new.state_dict()
    D = 32
    assert torch.equal(sd_new["blocks.0.adaLN.weight"][: 6 * D], sd_old["blocks.0.adaLN.weight"])
    assert torch.count_nonzero(sd_new["blocks.0.adaLN.weight"][6 * D:]) == 0
    assert torch.count_nonzero(sd_new["blocks.0.cross_attn.proj.weight"]) > 0  # not a dead pathway

    x, t, y = inputs()
    context = torch.randn(4, 5, 8)
    with torch.no_grad():
        before = old(x, t, labels=y)["image"]
        after = new(x, t, labels=y, context=context)["image"]
    assert torch.allclose(before, after, atol=1e-6)  # the zero gate: the loaded model's output

    out = new(x, t, labels=y, context=context)["image"]
    out.square().mean().backward()
    gate_rows = new.blocks[0].adaLN.weight.grad[8 * D:]  # the cross-attention gate
    assert gate_rows.abs().sum() > 0  # the new pathway learns from the first step


def test_a_real_shape_change_is_still_an_error(stage1):
    _, path = stage1
    torch.manual_seed(0)
    other = DiT(STREAMS, hidden_size=48, depth=2, num_heads=2, num_classes=3)
    with pytest.raises(ValueError, match="shapes differ"):
        init_from(other, str(path))

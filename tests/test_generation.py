"""Sample sets are a function of (seed, sample index) only: batch size does not change them."""
import pytest
import torch

from ditlab.config import ModelConfig
from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.schedules import DDPMSchedule, FlowSchedule
from ditlab.generation import generate
from ditlab.tasks.base import SampleSettings
from ditlab.tasks.image.model import build_image_model
from ditlab.tasks.image.task import ImageTask


def task(prediction="velocity", schedule=None):
    torch.manual_seed(0)
    model = build_image_model(ModelConfig(arch="DiT-S/4", hidden_size=32, depth=2, num_heads=2, num_classes=3), 8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    return ImageTask(model, Objective(schedule or FlowSchedule(), prediction)), model


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.5), ("heun", 0.0)])
def test_same_images_whatever_the_batch_size(sampler, eta):
    t, m = task("eps", DDPMSchedule()) if sampler == "ddpm" else task()
    settings = SampleSettings(sampler=sampler, steps=6, eta=eta, cfg_scale=2.0)

    def run(num, seed, batch_size, start=0):
        out = generate(t, m, num, seed, settings, batch_size=batch_size, start=start)
        return out["images"], out["labels"]

    a, la = run(7, 3, 7)
    b, lb = run(7, 3, 3)
    c, _ = run(3, 3, 2, start=4)
    assert torch.equal(la, lb) and la.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert (a.int() - b.int()).abs().max() <= 1  # BLAS blocking may differ by an ulp
    assert (a[4:].int() - c.int()).abs().max() <= 1
    d, _ = run(7, 4, 7)
    assert (a.int() - d.int()).abs().float().mean() > 5  # another seed: other images


def test_cfg_needs_conditional_model():
    torch.manual_seed(0)
    model = build_image_model(ModelConfig(arch="DiT-S/4", hidden_size=32, depth=1, num_heads=2), 8).eval()
    t = ImageTask(model, Objective(FlowSchedule(), "velocity"))
    with pytest.raises(ValueError, match="class-conditional"):
        generate(t, model, 2, 0, SampleSettings(cfg_scale=3.0, steps=2))


def test_precision_names_and_contexts():
    """Reports name the network's precision the way bench rows do; None means fp32 (no autocast at all)."""
    import torch

    from ditlab.generation import autocast_context, precision_name, sampling_autocast

    assert precision_name(None) == "fp32" and precision_name(torch.bfloat16) == "bf16-autocast"
    assert precision_name(torch.float16) == "fp16-autocast"
    assert sampling_autocast(torch.device("cpu")) is None  # the CPU never autocasts
    assert sampling_autocast(torch.device("cuda"), fp32=True) is None
    assert sampling_autocast(torch.device("cuda")) is torch.bfloat16
    w = torch.randn(4, 4)
    with autocast_context("cpu", torch.bfloat16):
        assert (w @ w).dtype == torch.bfloat16
    with autocast_context("cpu", None):
        assert (w @ w).dtype == torch.float32


class Compiled(torch.nn.Module):
    """What a recording torch.compile returns: the network, wrapped (it runs the same)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


@pytest.fixture
def record_compile(monkeypatch):
    """torch.compile replaced by a recorder (compiling on this CPU machine would take minutes)."""
    calls = []

    def fake(model, *args, **kwargs):
        calls.append(model)
        return Compiled(model)

    monkeypatch.setattr(torch, "compile", fake)
    return calls


def test_compile_for_sampling_follows_the_one_rule(record_compile):
    """`--compile auto`: on a GPU for 1,000 samples or more; on / off whatever the device; a bad value is named."""
    from ditlab.generation import compile_for_sampling

    net = torch.nn.Linear(2, 2)
    gpu, cpu = torch.device("cuda"), torch.device("cpu")  # a device object needs no GPU
    assert compile_for_sampling(net, gpu, 999) is net
    assert isinstance(compile_for_sampling(net, gpu, 1000), Compiled)
    assert compile_for_sampling(net, cpu, 10**6) is net
    assert isinstance(compile_for_sampling(net, cpu, 1, "on"), Compiled)
    assert compile_for_sampling(net, "cuda:1", 10**6, "off") is net
    assert len(record_compile) == 2
    with pytest.raises(ValueError, match="--compile 'yes'"):
        compile_for_sampling(net, cpu, 1, "yes")

"""Image samples are bitwise those of the code before the task-contract redesign (issue 15).

tests/fixtures/golden_samples_3f55bd6.npz was written on the CPU by the old API at commit 3f55bd6
(ditlab.sampling.generate with the old ImageTask / SuperResTask) for the seeded tiny models below;
the one generation loop must give exactly the same uint8 images and labels.
"""
import numpy as np
import pytest
import torch

from ditlab.config import ModelConfig, TaskConfig
from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.schedules import DDPMSchedule, FlowSchedule
from ditlab.generation import generate
from ditlab.tasks.base import SampleSettings
from ditlab.tasks.image.model import build_image_model
from ditlab.tasks.image.task import ImageTask
from ditlab.tasks.superres.model import build_superres_model
from ditlab.tasks.superres.task import SuperResTask

GOLDEN = "tests/fixtures/golden_samples_3f55bd6.npz"


def perturbed(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name,schedule,prediction,settings", [
    ("flow_heun_cfg", FlowSchedule(), "velocity", SampleSettings(sampler="heun", steps=4, cfg_scale=2.0)),
    ("ddpm_ddim_eta", DDPMSchedule(), "eps", SampleSettings(sampler="ddim", steps=4, eta=0.5)),
    ("ddpm_ancestral", DDPMSchedule(), "eps", SampleSettings(sampler="ddpm", steps=4, cfg_scale=1.5,
                                                               cfg_interval=(0.1, 5.0))),
])
def test_image_samples_are_bitwise_the_old_ones(golden, name, schedule, prediction, settings):
    torch.manual_seed(0)
    arch = ModelConfig(arch="DiT-S/4", hidden_size=32, depth=2, num_heads=2, num_classes=3)
    model = perturbed(build_image_model(arch, 8))
    out = generate(ImageTask(model, Objective(schedule, prediction)), model, 5, 11, settings, batch_size=2)
    assert np.array_equal(out["images"].numpy(), golden[name])
    assert np.array_equal(out["labels"].numpy(), golden[name + "_labels"])


def test_superres_samples_are_bitwise_the_old_ones(golden):
    torch.manual_seed(0)
    model = perturbed(build_superres_model(ModelConfig(arch="DiT-S/2", hidden_size=32, depth=2, num_heads=2), 8, 3, 2))
    task = SuperResTask(model, Objective(FlowSchedule(), "velocity"),
                        TaskConfig(kind="superres", factor=2, cond_noise_sample=0.1))
    hr = torch.from_numpy(golden["superres_conditions"])
    out = generate(task, model, 4, 5, SampleSettings(sampler="euler", steps=3, cfg_scale=1.5), {"images": hr},
                   batch_size=3)
    assert np.array_equal(out["images"].numpy(), golden["superres_euler"])

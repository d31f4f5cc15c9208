"""Issue 18: the new diffusion / sample keys load with today's defaults, and bad values are ConfigErrors naming the key."""
import pytest
import torch

from ditlab.cliargs import SAMPLER_CHOICES
from ditlab.config import load_config
from ditlab.configlib import ConfigError
from ditlab.diffusion.paths import TimePath, shift_path, single_stream_path
from ditlab.diffusion.samplers import SAMPLERS
from ditlab.diffusion.schedules import FlowSchedule
from ditlab.generation import check_settings, settings_of
from ditlab.tasks.base import SampleSettings

FLOW = ["diffusion.process=flow", "diffusion.prediction=velocity"]


def test_defaults_are_off():
    cfg = load_config()
    d = cfg.diffusion
    assert (d.loss_space, d.loss_t_min, d.loss_weighting, d.min_snr_gamma, d.time_shift) == \
        ("native", 0.05, "none", 5.0, 1.0)
    assert cfg.sample.time_shift == 1.0 and settings_of(cfg.sample) == SampleSettings()
    assert "time_shift" not in SampleSettings().describe()  # samples metadata of default runs unchanged


def test_valid_combinations_load():
    load_config(overrides=["diffusion.process=flow", "diffusion.prediction=x0", "diffusion.loss_space=velocity",
                           "diffusion.loss_weighting=min_snr", "diffusion.time_shift=3", "sample.time_shift=2",
                           "sample.sampler=dpmpp_2m"])
    load_config(overrides=["diffusion.loss_weighting=min_snr", "diffusion.min_snr_gamma=1", "sample.sampler=dpmpp_2m"])


@pytest.mark.parametrize("overrides,key", [
    (["diffusion.loss_space=velocity"], "diffusion.loss_space"),  # DDPM
    (FLOW + ["diffusion.loss_t_min=0"], "diffusion.loss_t_min"),
    (FLOW + ["diffusion.loss_t_min=1.5"], "diffusion.loss_t_min"),
    (["diffusion.min_snr_gamma=0"], "diffusion.min_snr_gamma"),
    (["diffusion.min_snr_gamma=nan"], "diffusion.min_snr_gamma"),
    (["diffusion.time_shift=2"], "diffusion.time_shift"),  # DDPM
    (FLOW + ["diffusion.time_shift=-1"], "diffusion.time_shift"),
    (["sample.time_shift=3"], "sample.time_shift"),  # DDPM
    (FLOW + ["sample.time_shift=0"], "sample.time_shift"),
    (["sample.eta=1.5"], "sample.eta"),
    (["sample.eta=-0.1"], "sample.eta"),
])
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=overrides)


@pytest.mark.parametrize("overrides,message,applies", [
    (["diffusion.min_snr_gamma=2"], "diffusion.min_snr_gamma=2 applies to diffusion.loss_weighting=min_snr only",
     ["diffusion.loss_weighting=min_snr"]),
    (FLOW + ["diffusion.schedule=cosine"], "diffusion.schedule=cosine .* applies to diffusion.process=ddpm only",
     ["diffusion.process=ddpm", "diffusion.prediction=eps"]),
    (FLOW + ["diffusion.logit_normal_mean=-0.5"], "diffusion.logit_normal_mean=-0.5 applies to diffusion.process=flow "
     "with diffusion.time_sampling=logit_normal only .* diffusion.time_sampling=uniform",
     ["diffusion.time_sampling=logit_normal"]),
    (["diffusion.logit_normal_std=1.5"],  # DDPM draws integer steps
     r"diffusion.logit_normal_std=1.5 applies .* \(got diffusion.process=ddpm", FLOW + ["diffusion.time_sampling=logit_normal"]),
    (["diffusion.time_sampling=logit_normal"], "diffusion.time_sampling=logit_normal applies to diffusion.process=flow only",
     FLOW),
    (FLOW + ["diffusion.num_timesteps=50"], "diffusion.num_timesteps=50 .* applies to diffusion.process=ddpm only",
     ["diffusion.process=ddpm", "diffusion.prediction=eps"]),
    (FLOW + ["diffusion.loss_t_min=0.1"], "diffusion.loss_t_min=0.1 clamps t where a flow x0 prediction",
     ["diffusion.prediction=x0"]),
    (["diffusion.prediction=x0", "diffusion.loss_t_min=0.1"], r"\(got diffusion.process=ddpm", FLOW + ["diffusion.prediction=x0"]),
    # Once only the first training preview failed on it, mid-run.
    (["sample.sampler=heun", "sample.eta=0.5"], "sample.eta=0.5 applies to sample.sampler=ddim only",
     ["sample.sampler=ddim"]),
])
def test_an_option_the_objective_does_not_read_is_an_error(overrides, message, applies):
    """A non-default value that this process / weighting / time sampling never reads is an error naming the key;
    the combination that reads it loads, and the keys at their defaults never fail."""
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)
    load_config(overrides=overrides + applies)
    load_config(overrides=FLOW + ["diffusion.schedule=linear", "diffusion.min_snr_gamma=5",
                                  "diffusion.logit_normal_mean=0", "diffusion.logit_normal_std=1"])


def test_bad_choice_names_the_key():
    with pytest.raises(ConfigError, match=r"diffusion\.loss_weighting"):
        load_config(overrides=["diffusion.loss_weighting=snr"])
    with pytest.raises(ConfigError, match=r"sample\.sampler"):
        load_config(overrides=["sample.sampler=dpmpp_3m"])


def test_cli_sampler_choices_are_the_samplers():
    assert tuple(SAMPLER_CHOICES) == tuple(SAMPLERS) and "dpmpp_2m" in SAMPLERS


class _Task:
    def __init__(self, schedule):
        self.objective = type("O", (), {"schedule": schedule})()
        self.can_guide = False


def test_check_settings_time_shift():
    from ditlab.diffusion.schedules import DDPMSchedule

    check_settings(SampleSettings(time_shift=3.0), _Task(FlowSchedule()))
    with pytest.raises(ValueError, match="time_shift"):
        check_settings(SampleSettings(time_shift=3.0), _Task(DDPMSchedule()))
    with pytest.raises(ValueError, match="time_shift"):
        check_settings(SampleSettings(time_shift=float("inf")), _Task(FlowSchedule()))
    assert SampleSettings(time_shift=3.0).describe()["time_shift"] == 3.0


def test_shift_path_warps_moving_streams_only():
    grid = FlowSchedule().time_grid(8)
    shifted = shift_path(single_stream_path("image", grid), 3.0)
    torch.testing.assert_close(shifted.times[:, 0].float(), FlowSchedule(shift=3.0).time_grid(8))
    two = TimePath(torch.stack([grid.double(), torch.full((9,), 0.1, dtype=torch.float64)], 1), ["image", "cond"])
    out = shift_path(two, 3.0)
    assert torch.equal(out.times[:, 1], two.times[:, 1])  # a constant condition level is an input, not a grid
    assert (out.times[1:-1, 0] > two.times[1:-1, 0]).all()  # s > 1: more noise at every inner step
    assert shift_path(two, 1.0) is two


class _RecordingTask(_Task):
    """A one-stream flow task whose denoiser records the levels it is asked at (ditlab.tasks.base contract)."""

    def __init__(self):
        super().__init__(FlowSchedule())
        self.objective.schedule_of = lambda name: self.objective.schedule
        self.seen = []

    def batch_conditions(self, indices, given):
        return {}

    def start(self, rng, settings, cond):
        grid = self.objective.schedule.time_grid(settings.steps)
        return {"image": rng.randn(1, 2, 2)}, single_stream_path("image", grid)

    def denoiser(self, model, cond):
        def denoise(x, t, drop):
            self.seen.append(float(t["image"][0]))
            return {"image": (torch.zeros_like(x["image"]), x["image"])}
        return denoise

    def decode(self, streams, cond):
        return streams


def test_generation_applies_sample_time_shift():
    from ditlab.generation import generate

    task = _RecordingTask()
    generate(task, None, 2, 0, settings_of(load_config(overrides=FLOW + ["sample.time_shift=3", "sample.steps=4"]).sample))
    torch.testing.assert_close(torch.tensor(task.seen), FlowSchedule(shift=3.0).time_grid(4)[:-1])
    task.seen.clear()
    generate(task, None, 2, 0, SampleSettings(steps=4))
    torch.testing.assert_close(torch.tensor(task.seen), FlowSchedule().time_grid(4)[:-1])

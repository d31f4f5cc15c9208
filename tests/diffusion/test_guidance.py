"""Classifier-free guidance: the combination rule and the guidance interval."""
import pytest
import torch

from ditlab.diffusion.guidance import guided
from ditlab.diffusion.schedules import FlowSchedule


def fake_denoiser(calls):
    """Conditional prediction 1, unconditional 0, for both x0 and eps; records batch sizes."""

    def f(x, t, drop):
        calls.append(int(drop.numel()))
        v = (~drop).float().view(-1, 1)
        return {"img": (v.expand(-1, 3), v.expand(-1, 3))}

    return f


def times(t, batch=4):
    return {"img": torch.full((batch,), t)}


def x(batch=4):
    return {"img": torch.zeros(batch, 3)}


@pytest.mark.parametrize("scale, expected", [(0.0, 0.0), (1.0, 1.0), (3.0, 3.0)])
def test_scales(scale, expected):
    calls = []
    out = guided(fake_denoiser(calls), scale)(x(), times(0.5))
    assert torch.allclose(out["img"][0], torch.full((4, 3), expected))
    assert calls == ([8] if scale not in (0.0, 1.0) else [4])


@pytest.mark.parametrize("t, inside", [(0.1, False), (0.5, True), (0.8, True), (0.9, False)])
def test_interval_on_noise_to_signal_ratio(t, inside):
    # Flow: sigma/alpha = t / (1 - t): 0.11, 1.0, 4.0, 9.0 against (0.28, 5.42].
    calls = []
    den = guided(fake_denoiser(calls), 2.5, interval=(0.28, 5.42), schedules={"img": FlowSchedule()})
    out = den(x(), times(t))
    assert torch.allclose(out["img"][1], torch.full((4, 3), 2.5 if inside else 1.0))
    assert calls == [8 if inside else 4]  # outside the interval one conditional pass, no doubled batch


def test_interval_validation():
    with pytest.raises(ValueError, match="lo < hi"):
        guided(fake_denoiser([]), 2.0, interval=(1.0, 0.5), schedules={"img": FlowSchedule()})
    with pytest.raises(ValueError, match="schedules"):
        guided(fake_denoiser([]), 2.0, interval=(0.1, 1.0))

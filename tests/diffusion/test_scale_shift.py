"""The per-scale schedule shift: the low resolution at t has the SNR of the pooled high resolution at t."""
import math

import pytest
import torch
import torch.nn.functional as F

from ditlab.diffusion.scale_shift import ShiftedSchedule, log_snr, scale_shift
from ditlab.diffusion.schedules import DDPMSchedule, FlowSchedule

T = torch.linspace(0.02, 0.98, 25)


@pytest.mark.parametrize("base", [FlowSchedule(), DDPMSchedule("linear"), DDPMSchedule("cosine")])
def test_log_snr_shifted_by_log_factor_squared(base):
    lo = ShiftedSchedule(base, scale_shift(2))
    torch.testing.assert_close(log_snr(lo, T), log_snr(base, T) + math.log(4), rtol=0, atol=1e-4)
    alpha, sigma = lo.alpha_sigma(T)
    if isinstance(base, FlowSchedule):  # the family the velocity objective assumes
        torch.testing.assert_close(alpha + sigma, torch.ones_like(T))
    else:
        torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(T))
    torch.testing.assert_close(lo.time_grid(5), base.time_grid(5))


def test_endpoints_stay_clean_and_noise():
    lo = ShiftedSchedule(FlowSchedule(), scale_shift(2))
    alpha, sigma = lo.alpha_sigma(torch.tensor([0.0, 1.0]))
    assert alpha.tolist() == [1.0, 0.0] and sigma.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("base", [FlowSchedule(), DDPMSchedule("linear")])
def test_matches_the_pooled_high_resolution_empirically(base):
    # Pool a noised high-resolution image 2x2: its SNR (signal power over noise power) must be the
    # shifted schedule's at the same t, not the base schedule's.
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(512, 1, 8, 8, generator=g).sign()  # unit-power signal
    x0 = x0.repeat_interleave(2, 2).repeat_interleave(2, 3)  # constant on 2x2 blocks: pooling keeps it
    t = torch.tensor(0.6)
    alpha, sigma = base.alpha_sigma(t)
    noise = F.avg_pool2d(torch.randn(x0.shape, generator=g), 2)
    pooled_snr = (alpha**2) / (sigma**2 * noise.var())
    a_lo, s_lo = ShiftedSchedule(base, scale_shift(2)).alpha_sigma(t)
    assert float(pooled_snr) == pytest.approx(float(a_lo**2 / s_lo**2), rel=0.03)
    assert float(pooled_snr) == pytest.approx(4 * float(alpha**2 / sigma**2), rel=0.03)

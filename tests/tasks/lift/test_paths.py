"""LIFT sampling paths: start at pure noise, end clean, never go back, respect the step budget, and
every sampler walks every one of them (with the held-stream probes doing what they say)."""
import pytest
import torch

from ditlab.tasks.lift.paths import build_lift_path
from ditlab.diffusion.noise import PerSampleRNG
from ditlab.diffusion.samplers import SAMPLERS, count_nfe, sample
from ditlab.diffusion.scale_shift import ShiftedSchedule
from ditlab.diffusion.schedules import DDPMSchedule, FlowSchedule
from ditlab.tasks.lift.errors import NodeErrors

NAMES = ["diagonal", "lo-first", "hi-first", "shift:0.3", "shift:-0.5", "shift:1", "lo-fixed", "lo-random",
         "lo-oracle", "dp-hi", "dp-total"]


def fake_errors(n=5):
    levels = FlowSchedule().time_grid(n - 1).double().numpy()
    grid = torch.linspace(0, 1, n).double()
    mse = (grid[:, None] * 0.5 + grid[None, :] * 0.2).numpy()[::-1, ::-1].copy()  # larger at high noise
    return NodeErrors(levels, mse, 0.5 * mse, 12, 3, 8)


@pytest.mark.parametrize("schedule", [FlowSchedule(shift=2.0), DDPMSchedule(num_timesteps=100)],
                         ids=["flow", "ddpm"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [2, 5, 9])
def test_paths_run_from_noise_to_clean_within_budget(schedule, name, steps):
    path = build_lift_path(name, schedule, steps, "hi", "lo", fake_errors(), ShiftedSchedule(schedule, 1.4))
    times = path.times
    assert path.streams == ["hi", "lo"]
    assert times[0, 0] == 1.0 and times[-1, 0] == 0.0  # the high resolution: noise -> clean
    if name == "lo-oracle":
        assert (times[:, 1] == 0).all()  # the clean low resolution of real images
    else:
        assert times[0, 1] == 1.0 and times[-1, 1] == 0.0
    assert (times[1:] <= times[:-1]).all()
    assert ((times[1:] != times[:-1]).any(dim=1)).all()  # no step that moves nothing
    assert count_nfe(path, "ddim") == path.num_steps <= steps


def test_l_path_finishes_one_scale_first_and_shift_one_is_lo_first():
    flow = FlowSchedule()
    lo_first = build_lift_path("lo-first", flow, 6, "hi", "lo")
    t_hi, t_lo = lo_first.times[:, 0], lo_first.times[:, 1]
    assert (t_hi[t_lo > 0] == 1).all()  # hi waits at pure noise while lo is generated
    torch.testing.assert_close(lo_first.times, build_lift_path("shift:1", flow, 6, "hi", "lo").times)
    hi_first = build_lift_path("hi-first", flow, 6, "hi", "lo").times
    assert (hi_first[hi_first[:, 0] > 0, 1] == 1).all()
    shifted = build_lift_path("shift:0.25", flow, 8, "hi", "lo").times
    assert (shifted[:, 1] <= shifted[:, 0]).all() and (shifted[1:-1, 1] < shifted[1:-1, 0]).any()


def test_unknown_and_dp_without_errors_are_named():
    with pytest.raises(ValueError, match="unknown LIFT path 'zigzag'"):
        build_lift_path("zigzag", FlowSchedule(), 4, "hi", "lo")
    with pytest.raises(ValueError, match="ditlab lift errors"):
        build_lift_path("dp-hi", FlowSchedule(), 4, "hi", "lo")
    with pytest.raises(ValueError, match="shift:D"):
        build_lift_path("shift:x", FlowSchedule(), 4, "hi", "lo")


def recording_denoiser(seen):
    def denoise(x, t):
        seen.append({k: v.clone() for k, v in x.items()})
        return {k: (0.5 * v, v) for k, v in x.items()}  # any (x0, eps) will do
    return denoise


@pytest.mark.parametrize("method", SAMPLERS)
def test_every_sampler_walks_every_path_and_holds_streams(method):
    flow = FlowSchedule()
    for name in NAMES:
        path = build_lift_path(name, flow, 4, "hi", "lo", fake_errors())
        x = {"hi": torch.randn(2, 3, 4, 4), "lo": torch.randn(2, 3, 2, 2)}
        seen = []
        out = sample(recording_denoiser(seen), dict(x), path, flow, PerSampleRNG(0, [0, 1]), method=method, eta=0.5)
        assert torch.isfinite(out["hi"]).all() and out["lo"].shape == x["lo"].shape
        if name == "lo-fixed":
            assert all(torch.equal(s["lo"], x["lo"]) for s in seen) and torch.equal(out["lo"], x["lo"])
        if name == "lo-random":
            # fresh noise every step (Heun's second evaluation of a step sees the same draw)
            assert len({float(s["lo"].sum()) for s in seen}) == path.num_steps
            assert abs(float(torch.cat([s["lo"] for s in seen]).std()) - 1) < 0.35


def test_fresh_noise_is_per_sample():
    # The redrawn low resolution of sample 1 does not depend on which batch it is in.
    flow = FlowSchedule()
    path = build_lift_path("lo-random", flow, 3, "hi", "lo")
    seen_a, seen_b = [], []
    sample(recording_denoiser(seen_a), {"hi": torch.zeros(2, 1, 2, 2), "lo": torch.zeros(2, 1, 1, 1)}, path, flow,
           PerSampleRNG(0, [0, 1]), method="ddim")
    sample(recording_denoiser(seen_b), {"hi": torch.zeros(1, 1, 2, 2), "lo": torch.zeros(1, 1, 1, 1)}, path, flow,
           PerSampleRNG(0, [1]), method="ddim")
    assert all(torch.equal(a["lo"][1], b["lo"][0]) for a, b in zip(seen_a, seen_b))

"""The LIFT task: two predicted streams, the training modes' (t_hi, t_lo), loss = hi + beta * lo,
the low resolution's shifted schedule, and `ditlab train / lift errors / sample --path` end to end."""
import json

import numpy as np
import pytest
import torch

from ditlab.config import LiftConfig, ModelConfig
from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.scale_shift import ShiftedSchedule
from ditlab.diffusion.schedules import DDPMSchedule, FlowSchedule
from ditlab.tasks.base import SampleSettings
from ditlab.tasks.lift.model import HI, LO, build_lift_model
from ditlab.tasks.lift.task import LiftTask
from ditlab.tasks.lift.times import draw_lift_times, mixture_weights
from ditlab.tasks.superres.model import downsample


def make(seed=0, **lift):
    torch.manual_seed(seed)
    model = build_lift_model(ModelConfig(arch="DiT-S/2", hidden_size=32, depth=1, num_heads=2), 8, 3, 2)
    with torch.no_grad():  # leave adaLN-Zero's all-zero start, so every parameter matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return LiftTask(model, Objective(FlowSchedule(), "velocity"), LiftConfig(**lift), factor=2), model


def test_two_predicted_streams_low_resolution_first():
    _, model = make()
    assert [(s.name, s.size, s.predict, s.pos_scale) for s in model.streams] == [(LO, 4, True, 2.0), (HI, 8, True, 1.0)]
    with pytest.raises(ValueError, match="task.factor=3"):
        build_lift_model(ModelConfig(arch="DiT-S/2", hidden_size=32, depth=1, num_heads=2), 8, 3, 3)


@pytest.mark.parametrize("schedule", [FlowSchedule(), DDPMSchedule(num_timesteps=50)], ids=["flow", "ddpm"])
def test_training_modes_draw_the_right_relation(schedule):
    torch.manual_seed(0)
    n = 20_000
    hi, lo = draw_lift_times("independent", n, schedule, "cpu")
    assert (hi != lo).float().mean() > 0.9 and abs(float(torch.corrcoef(torch.stack([hi, lo]))[0, 1])) < 0.05
    hi, lo = draw_lift_times("diagonal", n, schedule, "cpu")
    assert torch.equal(hi, lo)
    hi, lo = draw_lift_times("clean_lo", n, schedule, "cpu")
    assert (lo == 0).all() and (hi > 0).all()
    w = mixture_weights(LiftConfig())
    torch.testing.assert_close(w, torch.tensor([0.4, 0.3, 0.15, 0.15], dtype=torch.float64))
    hi, lo = draw_lift_times("mixture", n, schedule, "cpu", w)
    # lo at pure noise 15% and hi at pure noise 15% (+ the chance of a draw at exactly t = 1 for DDPM)
    slack = 0.03 if isinstance(schedule, DDPMSchedule) else 0.0
    assert abs(float((lo == 1).float().mean()) - 0.15) < 0.015 + slack
    assert abs(float((hi == 1).float().mean()) - 0.15) < 0.015 + slack
    # lo ahead or level: all of lo_ahead, half of independent, all of hi_noise -> 0.4 + 0.15 + 0.15
    assert abs(float((lo <= hi).float().mean()) - 0.70) < 0.02 + slack
    with pytest.raises(ValueError, match="lift.mix_lo_noise"):
        mixture_weights(LiftConfig(mix_lo_noise=-1))


def test_loss_is_hi_plus_beta_lo():
    images = torch.rand(6, 3, 8, 8) * 2 - 1
    for beta in (0.0, 0.5, 2.0):
        task, _ = make(beta=beta)
        torch.manual_seed(1)
        loss = task.loss_on_batch(images, None)
        torch.manual_seed(1)  # the same draws, in the task's order
        t_hi, t_lo = draw_lift_times("independent", 6, task.objective.schedule, "cpu")
        low = downsample(images, 2)
        n_hi, n_lo = torch.randn_like(images), torch.randn_like(low)
        parts = task.stream_losses(images, low, t_hi, t_lo, n_hi, n_lo)
        torch.testing.assert_close(loss, parts[HI] + beta * parts[LO])
        assert (parts[LO] > 0).all()


def test_beta_zero_ignores_the_low_resolution_gradient():
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    grads = {}
    for beta in (0.0, 1.0):
        task, model = make(beta=beta)
        torch.manual_seed(2)
        task.loss_on_batch(images, None).mean().backward()
        grads[beta] = model.final[LO].linear.weight.grad
    assert grads[0.0] is None or float(grads[0.0].abs().max()) == 0.0  # the low-res head gets no gradient
    assert float(grads[1.0].abs().max()) > 0


def test_clean_lo_carries_no_low_resolution_loss():
    task, model = make(train_mode="clean_lo")
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    t_hi, t_lo = torch.full((4,), 0.5), torch.zeros(4)
    low = downsample(images, 2)
    parts = task.stream_losses(images, low, t_hi, t_lo, torch.randn_like(images), torch.randn_like(low))
    assert (parts[LO] == 0).all() and (parts[HI] > 0).all()


def test_schedule_shift_reaches_training_and_sampling():
    task, model = make(schedule_shift=True)
    assert isinstance(task.objective.schedule_of(LO), ShiftedSchedule)
    assert task.objective.schedule_of(HI) is task.objective.schedule
    # The low resolution is noised with its shifted schedule: at t = 0.5 it keeps more signal.
    x0, eps = {LO: torch.ones(1, 3, 4, 4)}, {LO: torch.zeros(1, 3, 4, 4)}
    seen = {}

    def net(x_t, t):
        seen.update(x_t)
        return {LO: torch.zeros(1, 3, 4, 4)}

    task.objective.stream_losses(net, x0, {LO: torch.full((1,), 0.5)}, eps, {LO: 2})
    alpha, _ = ShiftedSchedule(FlowSchedule(), np.log(4)).alpha_sigma(torch.tensor(0.5))
    torch.testing.assert_close(seen[LO], torch.full((1, 3, 4, 4), float(alpha)))
    from ditlab.generation import generate

    images = generate(task, model.eval(), 2, 0, SampleSettings(sampler="euler", steps=3), batch_size=2)["images"]
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.uint8


def test_node_errors_run_the_network_in_the_precision_asked_for():
    """`ditlab lift errors` measures in the sampling's precision (bf16 autocast on a GPU unless --fp32): the
    autocast reaches the network (the errors move) and changes them only by rounding."""
    from ditlab.tasks.lift.errors import measure_node_errors

    task, model = make()
    model.eval()
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    fp32 = measure_node_errors(task, model, images, None, 3, batch_size=2)
    bf16 = measure_node_errors(task, model, images, None, 3, batch_size=2, autocast_dtype=torch.bfloat16)
    assert not np.array_equal(fp32.mse_hi, bf16.mse_hi)
    np.testing.assert_allclose(bf16.mse_hi[:-1, :-1], fp32.mse_hi[:-1, :-1], rtol=0.05)
    np.testing.assert_allclose(bf16.mse_lo[:-1, :-1], fp32.mse_lo[:-1, :-1], rtol=0.05)


def test_sampling_returns_high_resolution_per_sample_on_every_path():
    from ditlab.tasks.lift.errors import measure_node_errors
    from ditlab.generation import generate

    task, model = make()
    model.eval()
    errors = measure_node_errors(task, model, torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8), None, 3,
                                 batch_size=2)
    assert errors.mse_hi.shape == (4, 4) and errors.mse_hi[-1, -1] == pytest.approx(0, abs=1e-10)
    assert errors.mse_hi[0, 0] > errors.mse_hi[-2, -2]  # more noise, worse x0 predictions
    task.use_errors(errors)
    images = {}
    for name in ("diagonal", "lo-first", "hi-first", "lo-random", "dp-total"):
        settings = SampleSettings(sampler="heun", steps=3, path=name)
        a = generate(task, model, 3, 4, settings, batch_size=3)["images"]
        b = generate(task, model, 3, 4, settings, batch_size=2)["images"]
        assert a.shape == (3, 3, 8, 8) and (a.int() - b.int()).abs().max() <= 1
        images[name] = a
    # The paths really differ: none silently falls back to the diagonal. Same noise, so a fallback would
    # give identical images; the sampler is also handed another (t_hi, t_lo) schedule.
    from ditlab.diffusion.noise import PerSampleRNG

    def walked(name):
        return task.start(PerSampleRNG(0, [0]), SampleSettings(steps=3, path=name), {})[1]

    for name in ("lo-first", "hi-first", "lo-random"):  # (dp-total may plan the diagonal itself)
        assert not torch.equal(images[name], images["diagonal"]), name
        path = walked(name)
        assert not (torch.equal(path.times, walked("diagonal").times) and path.hold == walked("diagonal").hold), name
    with pytest.raises(ValueError, match="condition images"):
        generate(task, model, 1, 0, SampleSettings(steps=2, path="lo-oracle"))
    oracle = generate(task, model, 2, 0, SampleSettings(steps=2, path="lo-oracle"),
                      {"images": torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)})["images"]
    assert oracle.shape == (2, 3, 8, 8)


def test_cli_train_errors_and_sample_on_paths(tmp_path, capsys):
    from ditlab.cli import main

    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, images=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    run = tmp_path / "r"
    assert main(["train", "configs/demo.yaml", "task.kind=lift", "model.num_classes=0", "model.arch=DiT-S/2",
                 f"data.path={data}", f"train.run_dir={run}", "train.steps=2", "train.batch_size=4",
                 "model.hidden_size=32", "model.depth=1", "model.num_heads=2", "lift.train_mode=mixture", "sample.cfg_scale=1",
                 "--no-progress"]) == 0
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--num", "2", "--steps", "2", "--out", str(out), "--path", "dp-hi"]) == 1
    assert "ditlab lift errors" in capsys.readouterr().err
    assert main(["lift", "errors", str(run), "--data", str(data), "--levels", "3", "--num", "4", "--steps", "3",
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert (run / "lift_errors.npz").exists() and (run / "lift_errors.png").exists() and report["levels"] == 3
    assert "node errors" in captured.err  # a progress bar over the 16 nodes (--no-progress: none)
    assert main(["lift", "errors", str(run), "--data", str(data), "--levels", "3", "--num", "4", "--steps", "3",
                 "--device", "cpu", "--no-progress"]) == 0
    assert "node errors" not in capsys.readouterr().err
    for path in ("dp-hi", "lo-first", "shift:0.5"):
        assert main(["sample", str(run), "--num", "2", "--steps", "3", "--out", str(out), "--path", path]) == 0
        assert np.load(out)["arr_0"].shape == (2, 8, 8, 3)
    assert main(["sample", str(run), "--num", "2", "--steps", "2", "--out", str(out), "--path", "lo-oracle",
                 "--data", str(data)]) == 0
    assert main(["lift", "paths", str(run), "--steps", "3"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines() if x.startswith("{")]
    assert {x["path"] for x in lines} >= {"diagonal", "dp-total", "lo-random"}


def test_lift_errors_num_has_the_short_form():
    """`ditlab lift errors -n N`, as `-n` of every other command's --num."""
    from ditlab.cli import build_parser

    args = build_parser().parse_args(["lift", "errors", "RUN", "--data", "d.npz", "-n", "4"])
    assert args.num == 4
    assert build_parser().parse_args(["lift", "errors", "RUN", "--data", "d.npz", "--num", "5"]).num == 5


def test_schedule_shift_keeps_the_objective_options():
    """lift.schedule_shift rebuilds the objective with the low resolution's own schedule; the loss space,
    its clamp and the loss weighting come along (they used to be dropped, so the combination was refused)."""
    from ditlab.tasks.lift.task import lift_objective

    base = Objective(FlowSchedule(), "x0", loss_space="velocity", loss_t_min=0.1, loss_weighting="min_snr",
                     min_snr_gamma=3.0)
    shifted = lift_objective(base, 2, True)
    assert (shifted.loss_space, shifted.loss_t_min, shifted.loss_weighting, shifted.min_snr_gamma) == \
        ("velocity", 0.1, "min_snr", 3.0)
    assert isinstance(shifted.schedule_of(LO), ShiftedSchedule) and shifted.schedule_of(HI) is base.schedule
    assert LO not in base.stream_schedules  # the original is untouched

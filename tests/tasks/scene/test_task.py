"""The scene task: losses for DDPM and flow, context dropout, sampling shapes, per-sample noise, preview."""
import pytest
import torch

from ditlab.config import load_config
from ditlab.diffusion.objectives import build_objective
from ditlab.tasks.registry import build_model, build_task, build_train_data
from ditlab.generation import generate, preview
from ditlab.tasks.base import SampleSettings
from ditlab.tasks.scene.task import SceneTask, target_frame


def points(task, feats, mask, seed, start=0, **settings):
    """Generated points (B, K, 3) in world coordinates for scenes start .. start + B - 1."""
    out = generate(task, task.model, len(feats), seed, SampleSettings(**settings), {"features": feats, "mask": mask},
                   start=start)
    return out["points"]


def tiny_cfg(*extra):
    return load_config(None, [
        "task.kind=scene", "scene.num_scenes=8", "scene.objects=[1,3]", "scene.points_per_object=[8,20]",
        "scene.num_target_points=5", "scene.target_pool=12", "scene.fourier_bands=2",
        "model.hidden_size=32", "model.depth=2", "model.num_heads=4", *extra])


PROCESSES = [("ddpm", "eps"), ("ddpm", "x0"), ("ddpm", "v"), ("flow", "velocity")]


def setup(*extra, training=True):
    cfg = tiny_cfg(*extra)
    data = build_train_data(cfg, progress=False)
    torch.manual_seed(0)
    model = build_model(cfg, data.info)
    with torch.no_grad():  # a non-trivial network (adaLN-Zero starts with a zero output)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return cfg, data, model, build_task(cfg, model, build_objective(cfg.diffusion), training=training)


@pytest.mark.parametrize("process,prediction", PROCESSES)
def test_loss_on_batch_is_per_sample_finite_and_trains(process, prediction):
    cfg, data, model, task = setup(f"diffusion.process={process}", f"diffusion.prediction={prediction}",
                                   "task.cond_dropout=0.5")
    batch = data.batch(torch.arange(6))
    loss = task.loss_on_batch(**batch)
    assert loss.shape == (6,) and torch.isfinite(loss).all() and (loss > 0).all()
    loss.mean().backward()
    assert model.context_embed.mlp[0].weight.grad.abs().sum() > 0  # the scene reaches the loss
    assert torch.isfinite(model.dit.null_context.grad).all()


def test_loss_is_the_objective_on_the_target_points():
    """Recompute the flow loss by hand: ||net(x_t, t) - (eps - x0)||^2 averaged over the K x 3 values,
    with x0 and the scene's xyz in model units (times scene.coord_scale)."""
    cfg, data, model, task = setup("diffusion.process=flow", "diffusion.prediction=velocity", "scene.coord_scale=2")
    model.eval()
    batch = data.batch(torch.arange(4))
    torch.manual_seed(3)
    loss = task.loss_on_batch(**batch)
    torch.manual_seed(3)  # the same draws, in the task's order: t, noise, dropout flags
    t = task.objective.schedule.sample_time((4,), "cpu")
    noise = torch.randn_like(batch["target_points"])
    x0 = 2 * batch["target_points"]
    x_t = (1 - t)[:, None, None] * x0 + t[:, None, None] * noise
    context = batch["features"] * torch.tensor([2.0, 2.0, 2.0, 1.0])  # the target flag is not scaled
    out = model({"points": x_t}, {"points": t}, context=context, context_mask=batch["mask"],
                context_drop=torch.zeros(4, dtype=torch.bool))["points"]
    torch.testing.assert_close(loss, ((out - (noise - x0)) ** 2).mean(dim=(1, 2)))


@pytest.mark.parametrize("frame", ["world", "target"])
@pytest.mark.parametrize("flag", [True, False], ids=["target-flag", "no-flag"])
def test_task_denoiser_is_invariant_to_extra_padding(flag, frame):
    """Real scenes of the data set, padded further (with garbage) to a longer Pmax: the same prediction."""
    cfg, data, model, task = setup("scene.coord_scale=1.5", f"scene.frame={frame}")
    model.eval()
    feats, mask = data.scenes.features[:3].clone(), data.scenes.mask[:3]
    if not flag:
        feats[..., 3] = 0
    x, t = {"points": torch.randn(3, 5, 3)}, {"points": torch.tensor([0.2, 0.5, 0.9])}
    drop = torch.zeros(3, dtype=torch.bool)
    ref = task.denoiser(model, {"features": feats, "mask": mask})(x, t, drop)["points"]
    longer = torch.cat([feats, 5 * torch.randn(3, 17, 4).abs()], dim=1)  # flags > 0 in the padding too
    longer_mask = torch.cat([mask, torch.zeros(3, 17, dtype=torch.bool)], dim=1)
    out = task.denoiser(model, {"features": longer, "mask": longer_mask})(x, t, drop)["points"]
    for a, b in zip(ref, out):  # (x0_hat, eps_hat)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_context_dropout_one_makes_the_loss_blind_to_the_scene():
    cfg, data, model, task = setup("task.cond_dropout=1.0")
    model.eval()
    batch = data.batch(torch.arange(4))
    other = dict(batch, features=torch.randn_like(batch["features"]))
    torch.manual_seed(1)
    a = task.loss_on_batch(**batch)
    torch.manual_seed(1)
    b = task.loss_on_batch(**other)
    torch.testing.assert_close(a, b)
    torch.manual_seed(1)
    task.cond_dropout = 0.0
    assert not torch.allclose(task.loss_on_batch(**other), a)


def test_evaluation_task_has_no_dropout():
    cfg, data, model, task = setup("task.cond_dropout=0.3", training=False)
    assert task.cond_dropout == 0.0


@pytest.mark.parametrize("process,prediction", [("ddpm", "eps"), ("flow", "velocity")])
@pytest.mark.parametrize("sampler", ["ddim", "heun", "ddpm"])
def test_sampling_shapes_and_per_sample_noise(process, prediction, sampler):
    cfg, data, model, task = setup(f"diffusion.process={process}", f"diffusion.prediction={prediction}")
    model.eval()
    feats, mask = data.scenes.features[:3], data.scenes.mask[:3]
    pts = points(task, feats, mask, 7, sampler=sampler, steps=3, cfg_scale=1.0)
    assert pts.shape == (3, 5, 3) and torch.isfinite(pts).all()
    # Scene 2 alone, with its own index, gets the same points as in the batch of three.
    alone = points(task, feats[2:], mask[2:], 7, start=2, sampler=sampler, steps=3)
    torch.testing.assert_close(alone, pts[2:], atol=1e-5, rtol=1e-5)


def test_target_frame_is_the_mean_and_rms_radius_of_real_marked_points():
    feats = torch.zeros(2, 5, 4)
    feats[0, :3] = torch.tensor([[1.0, 0, 0, 1], [-1, 0, 0, 1], [5, 5, 5, 0]])
    feats[0, 3] = torch.tensor([9.0, 9, 9, 1])  # marked but padding: ignored
    feats[1, :2] = torch.tensor([[0.5, 0.5, 0.5, 0], [0.1, 0.2, 0.3, 0]])  # nothing marked
    mask = torch.tensor([[True, True, True, False, False], [True, True, False, False, False]])
    center, size = target_frame(feats, mask)
    torch.testing.assert_close(center, torch.tensor([[[0.0, 0, 0]], [[0.0, 0, 0]]]))
    torch.testing.assert_close(size, torch.tensor([[[1.0]], [[1.0]]]))
    feats[0, 1, :3] = torch.tensor([2.0, 2, 2])  # marked points (1,0,0), (2,2,2): mean (1.5,1,1)
    center, size = target_frame(feats, mask)
    torch.testing.assert_close(center[0, 0], torch.tensor([1.5, 1.0, 1.0]))
    torch.testing.assert_close(size[0, 0, 0], torch.tensor((0.25 + 1 + 1) ** 0.5))


@pytest.mark.parametrize("frame", ["world", "target"])
def test_model_coordinates_are_undone_after_sampling(frame):
    """Generation = the same sampler on the scene moved into model coordinates, mapped back by hand."""
    cfg, data, model, task = setup("scene.coord_scale=2.5", f"scene.frame={frame}")
    model.eval()
    plain = SceneTask(model, task.objective)  # world frame, scale 1: what the network sees, unchanged
    feats, mask = data.scenes.features[:2], data.scenes.mask[:2]
    pts = points(task, feats, mask, 0, sampler="euler", steps=3)
    origin, unit = target_frame(feats, mask) if frame == "target" else (torch.zeros(2, 1, 3), torch.ones(2, 1, 1))
    unit = unit / 2.5
    moved = torch.cat([(feats[..., :3] - origin) / unit, feats[..., 3:]], dim=-1)
    by_hand = points(plain, moved, mask, 0, sampler="euler", steps=3) * unit + origin
    torch.testing.assert_close(pts, by_hand)


def test_guidance_scale_changes_the_samples_and_zero_ignores_the_scene():
    cfg, data, model, task = setup()
    model.eval()
    feats, mask = data.scenes.features[:2], data.scenes.mask[:2]
    run = lambda f, s: points(task, f, mask, 0, sampler="ddim", steps=3, cfg_scale=s)  # noqa: E731
    plain, guided = run(feats, 1.0), run(feats, 3.0)
    assert guided.shape == plain.shape and not torch.allclose(plain, guided, atol=1e-4)
    torch.testing.assert_close(run(feats, 0.0), run(torch.randn_like(feats), 0.0))


def test_preview_draws_a_picture():
    cfg, data, model, task = setup()
    images, nrow = preview(task, model.eval(), data, cfg.sample.__class__(steps=2, grid_size=2), "cpu", None)
    assert images.dtype == torch.uint8 and images.shape[:2] == (1, 3) and images.shape[2] > 50 and nrow == 1

"""ICL task: what each noised query can see (through the network), where the loss lives, sampling.

The sampling test replaces the network by the exact denoiser of this Gaussian problem, so DDPM and
DDIM from the task's start streams and path must reproduce the exact posterior predictive of every query.
"""
import numpy as np
import pytest
import torch

from ditlab.config import DiffusionConfig, ModelConfig
from ditlab.diffusion.objectives import build_objective
from ditlab.tasks.icl.bayes import posterior_predictive
from ditlab.diffusion.samplers import sample
from ditlab.generation import generate
from ditlab.tasks.base import SampleSettings
from ditlab.tasks.icl.model import build_icl_model
from ditlab.tasks.icl.task import ICLDiffusionTask, ICLRegressionTask
from ditlab.tasks.icl.data import draw_prompts
from ditlab.tasks.icl.layout import X, Y_CTX, Y_QUERY

D, N = 3, 5


def random_model():
    torch.manual_seed(0)
    model = build_icl_model(ModelConfig(hidden_size=32, depth=2, num_heads=4), D, N)
    with torch.no_grad():  # adaLN-Zero starts as the identity: perturb to a non-trivial network
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def objective():
    return build_objective(DiffusionConfig(process="ddpm", schedule="cosine", prediction="v", num_timesteps=100))


def query_outputs(task, x, y_ctx, y_q):
    return task.forward(task.model, x, y_ctx, y_q, torch.full((x.shape[0],), 0.5))


def test_noised_query_sees_only_earlier_points_and_its_own_x():
    task = ICLDiffusionTask(random_model(), objective())
    torch.manual_seed(1)
    x, y_ctx, y_q = torch.randn(2, N, D), torch.randn(2, N), torch.randn(2, N)
    base = query_outputs(task, x, y_ctx, y_q)
    i = 2
    for name, j, visible in [(Y_CTX, i, False), (Y_CTX, i + 1, False), (X, i + 1, False), (Y_QUERY, i + 1, False),
                             (Y_QUERY, i - 1, False), (X, i, True), (Y_CTX, i - 1, True), (X, 0, True),
                             (Y_QUERY, i, True)]:
        xs = {X: x.clone(), Y_CTX: y_ctx.clone(), Y_QUERY: y_q.clone()}
        xs[name][:, j] += 3.0
        out = query_outputs(task, xs[X], xs[Y_CTX], xs[Y_QUERY])
        changed = not torch.allclose(out[:, i], base[:, i])
        assert changed == visible, (name, j)


def test_loss_counts_active_queries_only():
    task = ICLDiffusionTask(random_model(), objective())
    torch.manual_seed(2)
    x, y = torch.randn(4, N, D), torch.randn(4, N)
    mask = torch.zeros(4, N, dtype=torch.bool)
    mask[:, :3] = True
    torch.manual_seed(3)
    loss = task.loss_on_batch(x, y, mask)
    y2 = y.clone()
    y2[:, 3:] += 10.0  # later points: hidden by causality and outside the loss mask
    torch.manual_seed(3)
    torch.testing.assert_close(task.loss_on_batch(x, y2, mask), loss)
    y3 = y.clone()
    y3[:, 2] += 10.0  # an active query's own target: the loss must notice
    torch.manual_seed(3)
    assert not torch.allclose(task.loss_on_batch(x, y3, mask), loss)
    assert loss.shape == (4,)


def test_regression_baseline_loss_is_the_masked_squared_error():
    task = ICLRegressionTask(random_model(), objective())
    torch.manual_seed(4)
    x, y = torch.randn(3, N, D), torch.randn(3, N)
    mask = torch.ones(3, N, dtype=torch.bool)
    mask[:, -1] = False
    pred = task.predict(task.model, x, y)
    assert pred.shape == (3, N)
    torch.testing.assert_close(task.loss_on_batch(x, y, mask), ((pred - y) ** 2)[:, :-1].mean(1))
    y2 = y.clone()
    y2[:, 1] += 1.0  # the prediction of y_1 must not read y_1 itself
    torch.testing.assert_close(task.predict(task.model, x, y2)[:, :2], pred[:, :2])


def test_generation_shapes_and_batch_size_invariance():
    """Every query of every prompt sampled by the one generation loop; sample i does not depend on the batch."""
    task = ICLDiffusionTask(random_model(), objective())
    x, y = torch.randn(7, N, D), torch.randn(7, N)
    settings = SampleSettings(sampler="ddpm", steps=5)
    runs = [generate(task, task.model, 7, 0, settings, {"x": x, "y": y}, batch_size=b) for b in (3, 7)]
    assert runs[0]["y_sampled"].shape == (7, N) and torch.isfinite(runs[0]["y_sampled"]).all()
    assert torch.allclose(runs[0]["y_sampled"], runs[1]["y_sampled"], atol=1e-5)
    assert torch.equal(runs[0]["x"], x) and torch.equal(runs[0]["y"], y)


def test_the_regression_baseline_refuses_to_sample():
    task = ICLRegressionTask(random_model(), objective())
    with pytest.raises(ValueError, match="does not sample"):
        generate(task, task.model, 2, 0, SampleSettings(steps=2), {"x": torch.randn(2, N, D), "y": torch.randn(2, N)})


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_sampling_with_the_cached_context_equals_the_full_forward(method, monkeypatch):
    """The task's denoiser caches the clean context once per batch (DiT.prefix_cache); the samples must
    be those of the plain 3N-token forward at every step, drawn from the same noise."""
    task = ICLDiffusionTask(random_model(), objective())
    x, y = torch.randn(3, N, D), torch.randn(3, N)
    settings = SampleSettings(sampler=method, steps=8, eta=1.0 if method == "ddim" else 0.0)
    cached = generate(task, task.model, 3, 0, settings, {"x": x, "y": y})["y_sampled"]
    from ditlab.tasks.icl import task as icl_task

    def full_forward(self, xs, ys):  # no prefix cache: every step runs over all 3N tokens
        return self

    monkeypatch.setattr(icl_task.ICLDenoiser, "with_prefix", full_forward)
    monkeypatch.setattr(icl_task.ICLDenoiser, "__call__",
                        lambda self, xs, t: self.objective.denoised(self.model(xs, t, attn_mask=self.mask(xs[X].device)),
                                                                    xs, t, icl_task.PATCH_SIZES))
    full = generate(task, task.model, 3, 0, settings, {"x": x, "y": y})["y_sampled"]
    assert torch.allclose(cached, full, atol=1e-4, rtol=1e-4)
    assert cached.std() > 0.1


class BatchNoise:
    """One seeded generator for a whole batch: fast noise for the 1000-step exactness test (the
    generation loop's per-sample generators are tested above)."""

    def __init__(self, generator, batch):
        self.generator, self.batch = generator, batch

    def randn(self, *shape):
        return torch.randn(self.batch, *shape, generator=self.generator)


def exact_denoiser(schedule, tau, sigma):
    """The exact E[y0 | y_t] of every query, from the context the streams themselves carry."""
    cache = {}

    def denoise(x, t):
        if "m" not in cache:
            m, v = posterior_predictive(x[X].double().numpy(), x[Y_CTX][..., 0].double().numpy(), tau, sigma)
            cache["m"], cache["v"] = torch.from_numpy(m).float(), torch.from_numpy(v).float()
        m, v = cache["m"], cache["v"]
        y_t = x[Y_QUERY][..., 0]
        a, s = (u[:, None] for u in schedule.alpha_sigma(t[Y_QUERY]))
        x0 = m + a * v / (a**2 * v + s**2) * (y_t - a * m)
        eps = (y_t - a * x0) / s
        return {Y_QUERY: (x0[..., None], eps[..., None])}

    return denoise


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_sampling_with_the_exact_denoiser_gives_the_exact_predictive(method):
    # Every step of a T = 1000 DDPM: with fewer steps both samplers lose variance (each step uses
    # E[y0 | y_t] in place of a draw), e.g. -6% at 50 DDIM steps; docs/icl.md gives the numbers.
    tau, sigma = 1 / np.sqrt(D), 0.3  # network units
    g = torch.Generator().manual_seed(5)
    p = draw_prompts(20, N, D, tau, sigma, generator=g)
    schedule = build_objective(DiffusionConfig(process="ddpm", schedule="cosine", prediction="v")).schedule
    steps = schedule.num_timesteps
    task = ICLDiffusionTask(random_model(), build_objective(DiffusionConfig(process="ddpm", schedule="cosine",
                                                                           prediction="v")))
    S = 100
    cond = {"x": p.x.repeat_interleave(S, dim=0), "y": p.y.repeat_interleave(S, dim=0)}
    rng = BatchNoise(g, len(cond["x"]))
    start, path = task.start(rng, SampleSettings(sampler=method, steps=steps), cond)
    out = sample(exact_denoiser(schedule, tau, sigma), start, path, schedule, rng, method=method)
    samples = out[Y_QUERY][..., 0].reshape(20, S, N)
    m, v = posterior_predictive(p.x.double().numpy(), p.y.double().numpy(), tau, sigma)
    z = (samples.double().numpy() - m[:, None]) / np.sqrt(v)[:, None]  # standard normal if exact
    assert abs(z.mean()) < 0.04, z.mean()  # 10,000 draws: standard errors 0.01 (mean), 0.014 (variance)
    assert abs(z.var() - 1) < 0.04, z.var()
    # Per query position (k = 0..N-1 context points), not only pooled.
    assert np.all(np.abs(z.var(axis=(0, 1)) - 1) < 0.1), z.var(axis=(0, 1))

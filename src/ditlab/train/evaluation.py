"""Evaluation during training (train.eval_every, train.eval_metric): one number per eval step, from
the EMA weights, that picks ``RUN/checkpoints/best`` (early stopping, user note 002).

Each metric is one small function ``(EvalContext) -> float`` in :data:`METRICS`, with the task kinds
it applies to and whether higher or lower is better:

============== ======================== ======== ==================================================
metric         kinds                    better   what
============== ======================== ======== ==================================================
loss           every kind               lower    the task's loss_on_batch on the held-out examples
fid            image, superres, lift    lower    FID of train.eval_num samples against train.eval_ref
psnr           superres                 higher   samples conditioned on held-out images vs originals
collapse       superres                 higher   seed_to_residual (ditlab diagnose collapse), 4 seeds
icl_error_ratio icl                     lower    worst |error / Bayes error - 1| over k (icl eval)
============== ======================== ======== ==================================================

``collapse``: seed_to_residual near 0 means every seed invents the same detail (posterior
collapse); near 1 the seeds vary as much as real detail does. Higher is taken as better (values
far above 1, noise rather than detail, are not penalised: pair it with a look at the grids).

Held-out examples: ``data.eval_path`` when set, else a fixed seeded subset of the training images
(:func:`ditlab.data.subset.evaluation_subset`); scene runs draw ``train.eval_num`` scenes from
``scene.eval_seed``; icl runs draw fresh prompts (at the end of the curriculum) from a fixed seed.

Reproducibility: an evaluation runs between :func:`capture_rng_state` and :func:`restore_rng_state`
(Python, numpy, torch CPU and every CUDA device), seeds torch itself with :data:`EVAL_SEED` for the
held-out loss's draws, and never touches the data order; sampling uses per-sample generators. So a
run with evaluation on trains bit for bit like the same run with it off.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Optional

import torch

from ditlab.data.subset import evaluation_subset
from ditlab.generation import autocast_context, compile_for_sampling, generate, settings_of
from ditlab.tasks.registry import build_train_data
from ditlab.train.checkpoint import capture_rng_state, restore_rng_state

EVAL_SEED = 20261204  # torch's seed for the held-out loss's draws (timesteps, noise, flips)
COLLAPSE_SEEDS = 4  # seeds per condition of the collapse statistic
ICL_SAMPLES = 16  # posterior samples per prompt of the ICL error ratio
IMAGE_KINDS = ("image", "superres", "lift")


@dataclass
class EvalContext:
    """What a metric function sees: the EMA task and network, the held-out examples and its own state."""

    cfg: Any
    task: Any  # the EMA model's task (training=False: no dropout)
    model: torch.nn.Module  # the EMA network that generates (compiled with train.compile: Evaluator)
    data: Any  # TrainData holding the held-out examples
    indices: torch.Tensor  # (N,) CPU indices of the held-out examples in ``data``
    device: torch.device
    amp_dtype: Optional[torch.dtype] = None
    batch_size: int = 256
    state: dict = field(default_factory=dict)  # a metric's set-up (e.g. FID's network and reference)

    def autocast(self):
        return autocast_context(self.device, self.amp_dtype)

    def originals(self, num: Optional[int] = None) -> torch.Tensor:
        """uint8 (N, C, H, W) CPU held-out images (image-like kinds)."""
        idx = self.indices if num is None else self.indices[:num]
        return self.data.data.images[idx]

    def generate(self, num: int, conditions: dict, seeds: Optional[int] = None) -> dict:
        path = self.task.preview_path() if hasattr(self.task, "preview_path") else None
        return generate(self.task, self.model, num, self.cfg.sample.seed, settings_of(self.cfg.sample, path=path),
                        conditions, batch_size=self.batch_size, device=self.device, autocast_dtype=self.amp_dtype)


# ---- the metrics ------------------------------------------------------------------------------
@torch.no_grad()
def heldout_loss(ctx: EvalContext) -> float:
    """Mean per-sample loss on the held-out examples; torch's draws come from EVAL_SEED."""
    torch.manual_seed(EVAL_SEED)
    total, n = 0.0, 0
    for chunk in ctx.indices.split(ctx.batch_size):
        batch = ctx.data.batch(chunk.to(ctx.device))
        with ctx.autocast():
            loss = ctx.task.loss_on_batch(**batch)
        total += float(loss.float().sum())
        n += len(chunk)
    return total / n


def image_conditions(ctx: EvalContext) -> tuple[int, dict]:
    """(number of samples, conditions) of the image-output metrics: superres conditions on the held-out
    images; an image run with context sets (unnamed and/or named, data.contexts) on the held-out images'
    context rows and labels; the rest on nothing (labels i mod K)."""
    if ctx.cfg.task.kind == "superres":
        return len(ctx.indices), {"images": ctx.originals()}
    if getattr(ctx.task, "has_context", False):
        return len(ctx.indices), ctx.task.conditions_of(ctx.data, ctx.indices)
    return ctx.cfg.train.eval_num, {}


def setup_fid(ctx: EvalContext) -> None:
    """The Inception network (resolve_inception: $DITLAB_INCEPTION, the fid-helper package or the cache)
    and the reference statistics of train.eval_ref (a stats .npz, or a data set: computed once, cached)."""
    from ditlab.eval import is_stats_file, load_inception, load_stats, reference_stats, resolve_inception

    net_path = resolve_inception()
    net = load_inception(net_path, ctx.device)
    ref = ctx.cfg.train.eval_ref
    stats = load_stats(ref) if is_stats_file(ref) else reference_stats(ref, net_path, ctx.device, progress=False,
                                                                          net=net)
    ctx.state.update(net=net, reference=stats)


def fid(ctx: EvalContext) -> float:
    from ditlab.eval import FeatureStats, extract_features, frechet_distance

    num, cond = image_conditions(ctx)
    images = ctx.generate(num, cond)["images"]
    feats = extract_features(images, ctx.state["net"], ctx.device, batch_size=ctx.batch_size, progress=False)
    return frechet_distance(FeatureStats.from_features(feats), ctx.state["reference"])


def psnr(ctx: EvalContext) -> float:
    """Mean PSNR (dB) of samples conditioned on the held-out images against those images (inf if all equal)."""
    from ditlab.eval.psnr import psnr_per_image

    originals = ctx.originals()
    p = psnr_per_image(ctx.generate(len(originals), {"images": originals})["images"], originals)
    finite = p[torch.isfinite(p)]
    return finite.mean().item() if len(finite) else math.inf


def collapse(ctx: EvalContext) -> float:
    """seed_to_residual at the run's sample settings: across-seed pixel spread over the ground truth's
    residual energy, on max(2, eval_num // 4) held-out images x 4 seeds."""
    from ditlab.eval.collapse import spread_stats
    from ditlab.tasks.superres.diagnose import residual_energy

    M, K = max(2, len(ctx.indices) // COLLAPSE_SEEDS), COLLAPSE_SEEDS
    originals = ctx.originals(M)
    M = len(originals)
    images = ctx.generate(M * K, {"images": originals.repeat_interleave(K, dim=0)})["images"]
    within = spread_stats(images.float().div(255).view(M, K, -1)).within
    residual = residual_energy(originals, ctx.cfg.task.factor)
    return within / residual if residual > 0 else math.nan


def icl_error_ratio(ctx: EvalContext) -> float:
    """Worst |error / Bayes error - 1| over the context sizes k (ditlab icl eval, small settings:
    eval_num prompts, 16 samples each, the run's sampler settings, a fixed seed)."""
    from ditlab.tasks.icl.eval import EvalSettings, evaluate

    s = EvalSettings(prompts=len(ctx.indices), samples=ICL_SAMPLES, sampler=ctx.cfg.sample.sampler,
                     steps=ctx.cfg.sample.steps, eta=ctx.cfg.sample.eta, seed=EVAL_SEED,
                     batch_size=max(ICL_SAMPLES, ctx.batch_size * ICL_SAMPLES), bootstrap=10)
    run = SimpleNamespace(cfg=ctx.cfg, info=ctx.data.info, task=ctx.task, checkpoint="(training)")
    ratios = [r for r in evaluate(run, s, device=ctx.device)["error_ratio_to_bayes"]["mean"] if r is not None]
    return max(abs(r - 1) for r in ratios) if ratios else math.nan


@dataclass(frozen=True)
class Metric:
    fn: Callable[[EvalContext], float]
    kinds: Optional[tuple[str, ...]]  # None: every kind
    higher_is_better: bool
    setup: Optional[Callable[[EvalContext], None]] = None  # run once at start-up (rank 0)


METRICS: dict[str, Metric] = {
    "loss": Metric(heldout_loss, None, higher_is_better=False),
    "fid": Metric(fid, IMAGE_KINDS, higher_is_better=False, setup=setup_fid),
    "psnr": Metric(psnr, ("superres",), higher_is_better=True),
    "collapse": Metric(collapse, ("superres",), higher_is_better=True),
    "icl_error_ratio": Metric(icl_error_ratio, ("icl",), higher_is_better=False),
}


def check_eval_config(cfg) -> list[str]:
    """Config errors of train.eval_* (checked at start-up, before any data is read); returns the notes to
    print (evaluation options set while evaluation is off)."""
    t = cfg.train
    if t.eval_every < 0:
        raise ValueError(f"train.eval_every must be >= 0 (0 = off), got {t.eval_every}")
    if t.eval_patience < 0:
        raise ValueError(f"train.eval_patience must be >= 0 (0 = never stop early), got {t.eval_patience}")
    if not t.eval_every:  # evaluation off: its options do nothing; said at start-up, not an error, since
        # eval_every=0 is the switch that turns a config's evaluation off while keeping its settings
        defaults = type(t)()
        unused = [f"train.{k}={getattr(t, k)}" for k in ("eval_metric", "eval_num", "eval_ref", "eval_at_end",
                                                          "eval_patience") if getattr(t, k) != getattr(defaults, k)]
        unused += [f"data.eval_path={cfg.data.eval_path}"] if cfg.data.eval_path else []
        return [f"ditlab: {', '.join(unused)} not used: train.eval_every=0 (evaluation off)"] if unused else []
    metric = METRICS.get(t.eval_metric)
    if metric is None:
        raise ValueError(f"train.eval_metric={t.eval_metric!r}: choose one of {', '.join(METRICS)}")
    if metric.kinds is not None and cfg.task.kind not in metric.kinds:
        fits = [name for name, m in METRICS.items() if m.kinds is None or cfg.task.kind in m.kinds]
        raise ValueError(f"train.eval_metric={t.eval_metric} does not apply to task.kind={cfg.task.kind} (it needs "
                         f"task.kind {' or '.join(metric.kinds)}); for this kind choose one of {', '.join(fits)}")
    if t.eval_num < 1:
        raise ValueError(f"train.eval_num must be >= 1, got {t.eval_num}")
    if t.eval_ref and t.eval_metric != "fid":
        raise ValueError(f"train.eval_ref is the reference of train.eval_metric=fid; this run's metric is "
                         f"{t.eval_metric} (remove train.eval_ref)")
    if t.eval_metric == "fid" and not t.eval_ref:
        raise ValueError("train.eval_metric=fid needs train.eval_ref: a statistics .npz (ditlab fid ref) or a data set")
    if t.eval_metric == "collapse" and t.eval_num < 2 * COLLAPSE_SEEDS:
        raise ValueError(f"train.eval_metric=collapse needs train.eval_num >= {2 * COLLAPSE_SEEDS} (2 images x "
                         f"{COLLAPSE_SEEDS} seeds), got {t.eval_num}")
    if cfg.data.eval_path and cfg.task.kind not in IMAGE_KINDS:
        raise ValueError(f"data.eval_path applies to task.kind image, superres or lift; task.kind={cfg.task.kind} "
                         "draws its held-out examples itself")
    if cfg.task.kind == "scene" and cfg.scene.eval_seed == cfg.scene.seed:
        raise ValueError(f"scene.eval_seed equals scene.seed ({cfg.scene.seed}): the held-out scenes of "
                         "train.eval_metric would be training scenes")
    return []


def held_out(cfg, train_data) -> tuple[Any, torch.Tensor, bool]:
    """(data, CPU indices, whether ``data`` is new and must be moved to the device)."""
    n = cfg.train.eval_num
    kind = cfg.task.kind
    if kind == "scene":  # eval_num scenes of their own seed
        c = copy.deepcopy(cfg)
        c.scene.seed, c.scene.num_scenes = cfg.scene.eval_seed, n
        return build_train_data(c, False), torch.arange(n), True
    if kind == "icl":  # fresh prompts from EVAL_SEED, at the full dimension (the end of any curriculum)
        data = build_train_data(cfg, False)
        if hasattr(data, "set_step"):
            data.set_step(2**40)  # past any curriculum, far from int64 overflow
        return data, torch.arange(n), True
    if cfg.data.eval_path:
        c = copy.deepcopy(cfg)
        c.data.path = cfg.data.eval_path
        data = build_train_data(c, False)
        return data, evaluation_subset(data.num_examples, min(n, data.num_examples)), True
    return train_data, evaluation_subset(train_data.num_examples, min(n, train_data.num_examples)), False


@contextlib.contextmanager
def preserved_rng():
    """Every global RNG (Python, numpy, torch CPU, CUDA) as it was before the block."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


class Evaluator:
    """train.eval_metric of the EMA weights, callable once per eval step (rank 0)."""

    def __init__(self, cfg, train_data, ema_task, ema_model, device, amp_dtype=None, batch_size: int = 256):
        check_eval_config(cfg)
        self.name = cfg.train.eval_metric
        self.metric = METRICS[self.name]
        with preserved_rng():  # building held-out data or references draws nothing from the training RNG
            data, indices, new = held_out(cfg, train_data)
            if new:
                data.to(device)
            # With train.compile, generation compiles by `ditlab sample --compile auto`'s rule (on a GPU, for 1,000
            # samples or more): eager sampling was 3.5x slower on an H100, and a long run's FID-10k every few
            # thousand steps would otherwise cost more than its training. The wrapper shares the EMA weights.
            generator = compile_for_sampling(ema_model, device, cfg.train.eval_num,
                                             "auto" if cfg.train.compile else "off")
            self.ctx = EvalContext(cfg, ema_task, generator, data, indices, torch.device(device), amp_dtype,
                                   max(1, batch_size))
            if self.metric.setup is not None:
                self.metric.setup(self.ctx)

    @property
    def mode(self) -> str:
        return "max" if self.metric.higher_is_better else "min"

    def __call__(self) -> float:
        with preserved_rng():
            return float(self.metric.fn(self.ctx))

    def better(self, value: float, best: Optional[float]) -> bool:
        """Whether ``value`` beats ``best`` (None: nothing yet). NaN never wins."""
        if value is None or math.isnan(value):
            return False
        if best is None or math.isnan(best):
            return True
        return value > best if self.metric.higher_is_better else value < best

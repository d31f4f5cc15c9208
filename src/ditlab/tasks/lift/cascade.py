"""LIFT's cascade path: a separate single-scale model generates the low resolution, then the LIFT model
generates the high resolution from it with the low resolution held clean (user note 004, experiment 3:
"first generate the 32x32 image with an independent model").

The low-resolution run (task.kind=image, trained at the LIFT run's image size / task.factor), loaded
and checked (:func:`check_lo_run`), is attached to the LIFT task as a :class:`CascadeSource`
(``LiftTask.use_cascade``; ``ditlab sample RUN --path cascade --lo-run RUN_LO`` does it in
:func:`attach_lo_run`, ``ditlab ablate`` for its cascade rows). Inside the one generation loop
(:func:`ditlab.generation.generate`), each batch of the LIFT run on ``--path cascade`` then

1. generates its own low resolution: ``LiftTask.start`` asks the source for exactly the batch's sample
   indices (:meth:`CascadeSource.lowres`, one :func:`ditlab.generation.generate_batch` of the
   low-resolution run), uint8 images at the low resolution, in the batch's precision (autocast);
2. walks exactly lo-oracle's (t_hi, t_lo) rows with that low resolution held clean.

A caller may instead give the low resolution itself, as the condition ``"lowres"`` (uint8, one row per
sample); the source is then not asked.

Noise. The two models draw from distinct per-sample streams: the LIFT model from (seed, i) as on every
path, the low-resolution model from (:func:`lo_seed` (seed), i). Both are per sample index
(:class:`ditlab.diffusion.noise.PerSampleRNG`, which carries the seed), so sample i is the same whatever
the batch size, the device or the GPU count, and ``ditlab sample RUN_LO --seed lo_seed(K)`` reproduces
the low resolution of the cascade's sample i of seed K. A derived seed (rather than the same seed)
keeps the two models from seeing the same draws: with one seed the low-res model's starting noise would
be the first values of the LIFT model's high-resolution noise.

Labels. For class-conditional runs (both must have the same classes), sample i gets class i mod K in
both models: the LIFT batch's labels are passed to the low-resolution model.

Sampler settings. The low-resolution model samples with the cascade's settings (sampler, steps, CFG,
CFG interval, eta, time shift) without the path; its EMA weights of its latest checkpoint. Its network
evaluations count in the cascade's NFE (``ditlab ablate`` records them apart as ``lo_nfe``).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ditlab.tasks.base import Conditions, SampleInputs, SampleSettings

CASCADE_SALT = 0x10CA5CADE  # mixes the LIFT seed into the low-resolution model's seed
FLAG = "--lo-run"


def lo_seed(seed: int) -> int:
    """The seed of the low-resolution model's noise in a cascade of seed ``seed`` (31 bits, so that it
    can be passed to ``ditlab sample --seed``)."""
    state = np.random.SeedSequence([int(seed), CASCADE_SALT]).generate_state(1, dtype=np.uint32)[0]
    return int(state >> np.uint32(1))


def check_lo_run(run, lo, flag: str = FLAG) -> None:
    """ValueError naming ``flag`` when the loaded run ``lo`` cannot supply the low resolution of the
    LIFT run ``run``: its kind, image size, channels, classes or context set."""
    where = f"{flag} {lo.run_dir}"
    if lo.kind != "image":
        raise ValueError(f"{where} is a task.kind={lo.kind} run; the cascade's low resolution comes from a "
                         "single-scale image run (task.kind=image)")
    hi, factor = run.info["image_size"], run.cfg.task.factor
    size = hi // factor
    if lo.info["image_size"] != size:
        raise ValueError(f"{where} generates {lo.info['image_size']}x{lo.info['image_size']} images; the LIFT run "
                         f"{run.run_dir} ({hi}x{hi}, task.factor={factor}) needs {size}x{size} (train the low-resolution "
                         f"run with data.image_size={size})")
    if lo.info["channels"] != run.info["channels"]:
        raise ValueError(f"{where} generates {lo.info['channels']}-channel images; the LIFT run {run.run_dir} has "
                         f"{run.info['channels']}")
    if lo.task.num_classes != run.task.num_classes:
        def classes(n):
            return f"{n} classes" if n else "no classes (unconditional)"

        raise ValueError(f"{where} has {classes(lo.task.num_classes)}; the LIFT run {run.run_dir} has "
                         f"{classes(run.task.num_classes)}: sample i must get the same class in both")
    if lo.info.get("context_dim") is not None:
        raise ValueError(f"{where} cross-attends to a context set (data.context_path), which the cascade does not "
                         "pass; use a run trained without one")


class CascadeSource:
    """The loaded low-resolution run of a cascade (its task and EMA model), attached to a LIFT task with
    ``LiftTask.use_cascade``: it generates the low resolution of each batch on --path cascade."""

    def __init__(self, task, model: torch.nn.Module, checkpoint=None):
        self.task, self.model = task, model
        self.checkpoint = checkpoint  # the low-resolution run's checkpoint (recorded in the samples' ditlab_meta)

    @classmethod
    def of(cls, run, lo, flag: str = FLAG) -> CascadeSource:
        """The source of the LIFT run ``run`` from the loaded run ``lo`` (checked: :func:`check_lo_run`)."""
        check_lo_run(run, lo, flag)
        return cls(lo.task, lo.model, lo.checkpoint)

    def settings(self, settings: SampleSettings) -> SampleSettings:
        """The low-resolution model's sampler settings: the cascade's without the path."""
        return replace(settings, path=None)

    def check(self, settings: SampleSettings) -> None:
        """ValueError when the low-resolution run cannot sample with the cascade's settings (e.g. a time
        shift on a DDPM run); LiftTask.check_inputs calls it before any batch."""
        from ditlab.generation import check_settings

        check_settings(self.settings(settings), self.task)

    def lowres(self, rng, settings: SampleSettings, cond: Conditions) -> torch.Tensor:
        """uint8 low-resolution images (B, C, h, w) on ``rng.device`` for the batch's sample indices
        ``rng.indices``: the low-resolution run's samples from noise (lo_seed(rng.seed), i), with the
        batch's labels. Identical to ``generate(task, model, num, lo_seed(seed), ...)``'s rows of
        those indices, whatever the batch."""
        from ditlab.generation import generate_batch

        self.check(settings)
        given = {"labels": cond["labels"]} if "labels" in cond else {}
        out = generate_batch(self.task, self.model, torch.tensor(rng.indices, dtype=torch.long), lo_seed(rng.seed),
                             self.settings(settings), given, rng.device)  # autocast: the caller's (start runs in it)
        return out["images"].to(rng.device)


def attach_lo_run(run, inputs: SampleInputs) -> None:
    """``ditlab sample LIFT_RUN --lo-run RUN_LO``: load RUN_LO on the LIFT model's device, check it and
    attach it to the LIFT task (errors name the flag). Whether the path is cascade (and --data not given
    with it) is checked before any batch, by ``LiftTask.check_inputs``, which knows the path."""
    from ditlab.runs import load_run

    device = next(run.model.parameters()).device
    try:
        lo = load_run(inputs.lo_run, checkpoint=inputs.lo_checkpoint, device=device, kind="image", command=FLAG)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{FLAG} {inputs.lo_run}: {str(err).replace('--checkpoint', '--lo-checkpoint')}"
                                ) from None
    run.task.use_cascade(CascadeSource.of(run, lo))

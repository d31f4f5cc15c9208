"""LIFT's cascade path: a separate single-scale model generates the low resolution, then the LIFT model
generates the high resolution from it with the low resolution held clean (user note 004, experiment 3:
"first generate the 32x32 image with an independent model").

The cascade is two calls of the one generation loop (:func:`ditlab.generation.generate`):

1. the low-resolution run (task.kind=image, trained at the LIFT run's image size / task.factor)
   generates samples ``start .. start + num - 1``; its outputs, uint8 images at the low resolution,
   become the condition ``"lowres"``;
2. the LIFT run generates the same sample indices on ``--path cascade``: exactly lo-oracle's (t_hi,
   t_lo) rows, the low-resolution stream held clean at ``"lowres"`` (``LiftTask.start``).

Noise. The two models draw from distinct per-sample streams: the LIFT model from (seed, i) as on every
path, the low-resolution model from (:func:`lo_seed` (seed), i). Both are per sample index
(:class:`ditlab.diffusion.noise.PerSampleRNG`), so sample i is the same whatever the batch size, the
device or the GPU count, and ``ditlab sample RUN_LO --seed lo_seed(K)`` reproduces the low
resolution of the cascade's sample i of seed K. A derived seed (rather than the same seed) keeps
the two models from seeing the same draws: with one seed the low-res model's starting noise would be
the first values of the LIFT model's high-resolution noise.

Labels. For class-conditional runs (both must have the same classes), sample i gets class i mod K in
both models: the labels are drawn once and passed to both.

Sampler settings. The low-resolution model samples with the cascade's settings (sampler, steps, CFG,
CFG interval, eta) without the path; its EMA weights of its latest checkpoint.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

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


@torch.no_grad()
def cascade_conditions(run, lo, num: int, seed: int, settings: SampleSettings, batch_size: int = 256,
                       start: int = 0, device: torch.device | str = "cpu",
                       autocast_dtype: Optional[torch.dtype] = None,
                       progress: Optional[Callable] = None) -> Conditions:
    """The conditions of the LIFT run ``run`` on --path cascade for samples ``start .. start + num - 1``:
    ``"lowres"``, the low-resolution run ``lo``'s samples (uint8, the low resolution) drawn with
    :func:`lo_seed` (seed), and ``"labels"`` (i mod K) for class-conditional runs."""
    from ditlab.generation import generate

    check_lo_run(run, lo)
    given: Conditions = {}
    if run.task.num_classes:
        given["labels"] = torch.arange(start, start + num) % run.task.num_classes
    out = generate(lo.task, lo.model, num, lo_seed(seed), replace(settings, path=None), given,
                   batch_size=batch_size, start=start, device=device, autocast_dtype=autocast_dtype,
                   progress=progress)
    return {"lowres": out["images"], **given}


def cascade_sample_conditions(run, inputs: SampleInputs, num: int, path: str) -> Conditions:
    """``ditlab sample LIFT_RUN --path cascade --lo-run RUN_LO``: load RUN_LO on the LIFT model's device and
    generate the low resolution of samples 0..num-1 with ``inputs``' seed and settings. Errors name the flags."""
    if path != "cascade":
        raise ValueError(f"{FLAG} applies to --path cascade only (this is --path {path})")
    if inputs.lo_run is None:
        raise ValueError(f"--path cascade needs {FLAG} RUN_LO: a task.kind=image run at the low resolution "
                         "generates the low resolution")
    if inputs.data is not None:
        raise ValueError(f"--data applies to --path lo-oracle only; --path cascade generates its low resolution "
                         f"with {FLAG}")
    from ditlab.generation import sampling_autocast, settings_of
    from ditlab.runs import load_run

    device = next(run.model.parameters()).device
    try:
        lo = load_run(inputs.lo_run, device=device, kind="image", command=FLAG)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{FLAG} {inputs.lo_run}: {err}") from None
    check_lo_run(run, lo)  # before any sampling
    settings = inputs.settings or settings_of(run.cfg.sample, path=path)
    return cascade_conditions(run, lo, num, inputs.seed, settings, batch_size=inputs.batch_size, device=device,
                              autocast_dtype=sampling_autocast(device, inputs.fp32))

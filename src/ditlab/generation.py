"""The one generation loop for every task kind: start -> sampler over a time path -> decode.

Noise is drawn per sample index (:class:`PerSampleRNG`), and per-sample conditions are split with
the batches, so sample i of seed K is the same whatever the batch size, device or GPU count (a
rank generates its share ``[start, start + num)`` of the indices). The task supplies the streams,
the path, the denoiser and the decoding through the contract of :mod:`ditlab.tasks.base`.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ditlab.diffusion.guidance import guided
from ditlab.diffusion.noise import PerSampleRNG
from ditlab.diffusion.paths import shift_path
from ditlab.diffusion.samplers import SAMPLERS, sample
from ditlab.imageio import atomic_savez
from ditlab.samples_meta import META_KEY
from ditlab.tasks.base import Conditions, SampleSettings



def sampling_autocast(device: torch.device, fp32: bool = False) -> Optional[torch.dtype]:
    """bf16 autocast for sampling on a GPU (the samplers' own arithmetic stays fp32); none on the CPU."""
    return torch.bfloat16 if device.type == "cuda" and not fp32 else None


COMPILE_CHOICES = ("auto", "on", "off")
COMPILE_AUTO_MIN_SAMPLES = 1000


def compile_for_sampling(model: torch.nn.Module, device: torch.device | str, num: int,
                         when: str = "auto") -> torch.nn.Module:
    """``model``, torch.compile'd for generating ``num`` samples on ``device``: always with "on", never with
    "off", and with "auto" on a GPU for 1,000 samples or more. Compiling costs ~30 s once and made sampling
    3.5x faster on an H100 (BENCHMARKS.md, "Sampling speed"); for a few samples the compilation outweighs it."""
    if when not in COMPILE_CHOICES:
        raise ValueError(f"--compile {when!r}: choose one of {', '.join(COMPILE_CHOICES)}")
    auto = torch.device(device).type == "cuda" and num >= COMPILE_AUTO_MIN_SAMPLES
    return torch.compile(model) if when == "on" or (when == "auto" and auto) else model


def autocast_context(device: torch.device | str, autocast_dtype: Optional[torch.dtype]):
    """The network calls' precision: autocast to ``autocast_dtype``, or nothing when it is None."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()


def precision_name(autocast_dtype: Optional[torch.dtype]) -> str:
    """How reports name the precision the network ran in: 'bf16-autocast' or 'fp32'."""
    if autocast_dtype is None:
        return "fp32"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(autocast_dtype, str(autocast_dtype)) + "-autocast"


def check_settings(settings: SampleSettings, task) -> None:
    """Sampler settings that no task can use, named by their flags."""
    if settings.sampler not in SAMPLERS:
        raise ValueError(f"--sampler {settings.sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if settings.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {settings.steps}")
    if settings.eta != 0.0 and settings.sampler != "ddim":
        raise ValueError(f"--eta applies to --sampler ddim only (got --sampler {settings.sampler})")
    if not 0.0 <= settings.eta <= 1.0:
        raise ValueError(f"--eta must be in [0, 1], got {settings.eta}")
    if not (math.isfinite(settings.time_shift) and settings.time_shift > 0):
        raise ValueError(f"--time-shift (sample.time_shift) must be a finite number > 0, got {settings.time_shift}")
    if settings.time_shift != 1.0 and not task.objective.schedule.terminal_pure_noise:  # only flow paths reach t = 1
        raise ValueError(f"--time-shift (sample.time_shift) {settings.time_shift:g} applies to diffusion.process=flow "
                         "runs only; this run is DDPM")
    if settings.cfg_scale != 1.0 and not task.can_guide:
        raise ValueError("classifier-free guidance (--cfg other than 1) needs a conditional model "
                         "(class-conditional, a condition stream or a context set)")
    sets = tuple(getattr(task, "context_sets", ()))
    for name, w in settings.cfg_context:
        if name not in sets:
            raise ValueError(f"--cfg-context {name}={w:g}: this run's context sets are {list(sets) or 'none'}")
        if not abs(w) < float("inf"):  # NaN, inf
            raise ValueError(f"--cfg-context {name}={w}: the scale must be finite")
        if w != 1.0 and hasattr(task, "check_cfg_context"):  # was the pass "this set dropped alone" trained?
            task.check_cfg_context(name)
    cond_scale = getattr(settings, "cond_scale", 1.0)
    if not (math.isfinite(cond_scale) and cond_scale >= 0):
        raise ValueError(f"--cond-scale must be a finite number >= 0, got {cond_scale}")
    if cond_scale != 1.0 and not getattr(task, "has_cond_pathway", False):
        raise ValueError(f"--cond-scale {cond_scale:g}: this run has no condition pathway to scale (it applies to "
                         "task.kind=superres runs with a real condition)")


@torch.no_grad()
def generate_batch(task, model: torch.nn.Module, indices: torch.Tensor, seed: int, settings: SampleSettings,
                   given: Conditions, device: torch.device | str = "cpu",
                   autocast_dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """The task's outputs for the sample indices ``indices`` (CPU tensors, sample first).

    ``given``: the caller's per-sample conditions, one row per index (already split to this batch).
    """
    device = torch.device(device)

    rng = PerSampleRNG(seed, indices.tolist(), device)
    cond = task.batch_conditions(indices.to(device), {k: v.to(device) for k, v in given.items()})
    # a start that itself generates (LIFT's cascade: the low resolution) does so in the batch's precision
    with autocast_context(device, autocast_dtype):
        x, path = task.start(rng, settings, cond)
    path = shift_path(path, settings.time_shift)  # the identity at the default 1
    # Per stream: a stream may follow its own schedule (LIFT's shifted low resolution).
    schedules = {name: task.objective.schedule_of(name) for name in path.streams}
    denoiser = guided(task.denoiser(model, cond), settings.cfg_scale, settings.cfg_interval, schedules,
                      context_scales=dict(settings.cfg_context) or None)
    with autocast_context(device, autocast_dtype):
        out = sample(denoiser, x, path, schedules, rng, method=settings.sampler, eta=settings.eta)
    return {k: v.cpu() for k, v in task.decode(out, cond).items()}


def batch_bar(enabled: bool, desc: str = "sampling"):
    """``generate``'s ``progress``: a tqdm bar over the batches when ``enabled``, else None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return lambda batches: tqdm(batches, unit="batch", desc=desc)


def generate(task, model: torch.nn.Module, num: int, seed: int, settings: SampleSettings,
             conditions: Optional[Conditions] = None, batch_size: int = 256, start: int = 0,
             device: torch.device | str = "cpu", autocast_dtype: Optional[torch.dtype] = None,
             progress: Optional[Callable] = None,
             on_batch: Optional[Callable[[dict, torch.Tensor], None]] = None) -> dict[str, torch.Tensor]:
    """Samples ``start .. start + num - 1`` in batches -> the task's outputs, concatenated.

    ``conditions`` hold one row per sample (row r is sample start + r); ``on_batch(outputs,
    indices)`` sees each batch; ``progress`` wraps the list of batches (e.g. tqdm).
    """
    if num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    check_settings(settings, task)
    conditions = conditions or {}
    for key, value in conditions.items():
        if len(value) != num:
            raise ValueError(f"{len(value)} rows of condition {key!r} given for {num} samples")
    if hasattr(task, "check_inputs"):  # before any batch (LIFT: the path and the inputs it takes)
        task.check_inputs(settings, conditions)
    parts: dict[str, list] = {}
    batches = list(torch.arange(start, start + num).split(batch_size))
    for indices in progress(batches) if progress else batches:
        rows = indices - start
        given = {k: v[rows] for k, v in conditions.items()}
        out = generate_batch(task, model, indices, seed, settings, given, device, autocast_dtype)
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
        if on_batch is not None:
            on_batch(out, indices)
    return {k: torch.cat(v) for k, v in parts.items()}


def settings_of(sample_cfg, **changes) -> SampleSettings:
    """SampleSettings from a run's ``sample`` config section (the defaults of `ditlab sample`)."""
    base = dict(sampler=sample_cfg.sampler, steps=sample_cfg.steps, cfg_scale=sample_cfg.cfg_scale,
                cfg_interval=tuple(sample_cfg.cfg_interval) if sample_cfg.cfg_interval else None, eta=sample_cfg.eta,
                time_shift=sample_cfg.time_shift)
    base.update({k: v for k, v in changes.items() if v is not None})
    return SampleSettings(**base)


def preview(task, model, data, sample_cfg, device, autocast_dtype=None):
    """The training preview: the task's preview conditions, generated with the run's sample settings
    from per-sample generators (the training RNG is untouched), drawn by the task. None when the
    task draws nothing. A task with several paths names the one to preview (``preview_path``)."""
    cond = task.preview_conditions(data, sample_cfg.grid_size)
    if cond is None:
        return None
    num = len(next(iter(cond.values()))) if cond else sample_cfg.grid_size
    path = task.preview_path() if hasattr(task, "preview_path") else None
    outputs = generate(task, model, num, sample_cfg.seed, settings_of(sample_cfg, path=path), cond,
                       batch_size=max(num, 1), device=device, autocast_dtype=autocast_dtype)
    return task.preview_figure(outputs, cond)


def save_samples(path, task, outputs: dict[str, torch.Tensor], meta: dict) -> Path:
    """The samples ``.npz`` (atomic): the task's arrays (``task.npz_arrays``) and ``ditlab_meta``,
    a JSON string with the task kind, run, checkpoint and sampler settings, which ``ditlab fid``,
    ``psnr``, ``icl eval`` and ``scene eval`` read to check what they are given."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = task.npz_arrays(outputs)
    arrays[META_KEY] = np.array(json.dumps(meta))
    return atomic_savez(path, **arrays)

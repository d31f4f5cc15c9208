"""Generate images from a trained image model, in batches, with noise per sample index.

Sample i of seed K has the same initial noise, the same stochastic-step noise and the same class
label (i mod num_classes) whatever the batch size, so sample sets and their FID do not change with
batch size or device count.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch

from ditlab.diffusion.guidance import guided
from ditlab.diffusion.noise import PerSampleRNG
from ditlab.diffusion.samplers import sample
from ditlab.imageio import to_uint8
from ditlab.tasks.image.task import STREAM


def sampling_autocast(device: torch.device, fp32: bool = False) -> Optional[torch.dtype]:
    """bf16 autocast for sampling on a GPU (the samplers' own arithmetic stays fp32); none on the CPU."""
    return torch.bfloat16 if device.type == "cuda" and not fp32 else None


def labels_for(indices: torch.Tensor, num_classes: int) -> Optional[torch.Tensor]:
    """Balanced, batch-independent class labels: sample i gets class i mod num_classes."""
    return indices % num_classes if num_classes else None


@torch.no_grad()
def generate_batch(
    task,
    model: torch.nn.Module,
    indices: torch.Tensor,
    seed: int,
    sampler: str = "ddim",
    steps: int = 50,
    cfg_scale: float = 1.0,
    eta: float = 0.0,
    device: torch.device | str = "cpu",
    autocast_dtype: Optional[torch.dtype] = None,
    labels: Optional[torch.Tensor] = None,
    conditions: Optional[torch.Tensor] = None,
    cfg_interval: Optional[tuple[float, float]] = None,
    context: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Samples for the given sample indices -> (uint8 (B, 3, H, W) on CPU, labels or None).

    ``cfg_interval`` = (lo, hi): guide only where sigma/alpha is in (lo, hi] (see diffusion.guidance).

    ``conditions``: uint8 images for conditional tasks (super-resolution: the high-resolution
    originals whose downsampled copies are the condition), one per index. ``context``: for a model
    with a context set, (embeddings (B, M, D), bool mask (B, M)), one row per index.
    """
    device = torch.device(device)
    if cfg_scale != 1.0 and not task.can_guide:
        raise ValueError("classifier-free guidance (cfg scale != 1) needs a conditional model "
                         "(class-conditional, a condition stream or a context set)")
    rng = PerSampleRNG(seed, indices.tolist(), device)
    x, path = task.start(rng, steps, conditions.to(device) if conditions is not None else None)
    if labels is None:
        labels = labels_for(indices, task.num_classes)
    labels_dev = labels.to(device) if labels is not None else None
    # Per stream: a stream may follow its own schedule (LIFT's shifted low resolution).
    schedules = {name: task.objective.schedule_of(name) for name in path.streams}
    if context is not None:
        embeddings, mask = context
        cond_denoiser = task.denoiser(labels_dev, model, context=(embeddings.to(device).float(), mask.to(device)))
    else:
        cond_denoiser = task.denoiser(labels_dev, model)
    denoiser = guided(cond_denoiser, cfg_scale, cfg_interval, schedules)
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with ctx:
        out = sample(denoiser, x, path, schedules, rng, method=sampler, eta=eta)
    return to_uint8(out[STREAM]).cpu(), labels


def generate(
    task,
    model: torch.nn.Module,
    num: int,
    seed: int,
    batch_size: int = 256,
    start: int = 0,
    progress: Optional[Callable] = None,
    on_batch: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None,
    **kwargs,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Samples start .. start + num - 1 in batches; ``on_batch(images, indices)`` sees each batch.

    Per-sample inputs, one row per sample, are split with the batches: ``conditions``, ``labels``
    and ``context`` = (embeddings, mask) (see :func:`generate_batch`).
    """
    images, labels = [], []
    conditions = kwargs.pop("conditions", None)
    if conditions is not None and len(conditions) != num:
        raise ValueError(f"{len(conditions)} condition images given for {num} samples")
    given_labels = kwargs.pop("labels", None)
    if given_labels is not None and len(given_labels) != num:
        raise ValueError(f"{len(given_labels)} labels given for {num} samples")
    context = kwargs.pop("context", None)
    if context is not None and not len(context[0]) == len(context[1]) == num:
        raise ValueError(f"context rows ({len(context[0])} embeddings, {len(context[1])} masks) given "
                         f"for {num} samples")
    batches = list(torch.arange(start, start + num).split(batch_size))
    for indices in progress(batches) if progress else batches:
        rows = indices - start
        cond = conditions[rows] if conditions is not None else None
        per_sample = {}
        if given_labels is not None:
            per_sample["labels"] = given_labels[rows]
        if context is not None:
            per_sample["context"] = (context[0][rows], context[1][rows])
        imgs, labs = generate_batch(task, model, indices, seed, conditions=cond, **per_sample, **kwargs)
        images.append(imgs)
        if labs is not None:
            labels.append(labs)
        if on_batch is not None:
            on_batch(imgs, indices)
    return torch.cat(images), (torch.cat(labels) if labels else None)

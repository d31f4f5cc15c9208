"""Image generation task: a batch of images (+ labels) <-> one target stream named "image".

The task is the only place that knows pixels are uint8 in [0, 255] and the network sees [-1, 1].

With a context set (data.context_path) the model cross-attends to each image's set of token
embeddings. Its CFG dropout (task.cond_dropout) drops the context and the label *together*, because
the unconditional pass of guidance drops both: so that pass is the model trained on exactly those
samples. A row with no real token is given the learned null context as well (one meaning of "no
context" for the model, see ditlab.data.context_sets).
"""
from __future__ import annotations

from typing import Optional

import torch

from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.paths import TimePath, single_stream_path
from ditlab.models.dit import DiT, StreamSpec, build_dit, parse_arch
from ditlab.models.wrappers import unwrap_model

STREAM = "image"


def image_stream(image_size: int, channels: int, arch: str) -> StreamSpec:
    _, _, _, patch = parse_arch(arch)
    if image_size % patch:
        raise ValueError(f"image size {image_size} is not divisible by the patch size {patch} of {arch}")
    return StreamSpec(STREAM, channels, image_size, patch)


def build_image_model(model_cfg, image_size: int, channels: int = 3, context_dim: Optional[int] = None) -> DiT:
    """``context_dim``: width of the context set's embeddings (None: no cross-attention)."""
    return build_dit(model_cfg, [image_stream(image_size, channels, model_cfg.arch)], context_dim)


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [-1, 1]."""
    return images_uint8.float().div_(127.5).sub_(1.0)


def model_num_classes(model: torch.nn.Module) -> int:
    """Classes of a class-conditional DiT (0 when it has no label embedding)."""
    embed = unwrap_model(model).label_embed
    return embed.num_classes if embed is not None else 0


def repeat_labels(labels: torch.Tensor, batch: int) -> torch.Tensor:
    """Guidance stacks the conditional and unconditional passes into one batch of k * B
    (diffusion.guidance.guided): repeat the labels to match; the drop flags pick the null ones."""
    return labels.repeat(batch // labels.shape[0])


def context_drop_flags(drop: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
    """Samples that see the learned null context: the dropped ones and those with no real token."""
    return drop | ~context_mask.any(dim=1)


def repeat_context(context: tuple[torch.Tensor, torch.Tensor], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings (B, M, D), mask (B, M)) repeated to the k * B batch of guidance, like repeat_labels."""
    embeddings, mask = context
    k = batch // embeddings.shape[0]
    return embeddings.repeat(k, 1, 1), mask.repeat(k, 1)


def preview_samples(task, model, s, device, autocast_dtype, num: int, conditions=None, **per_sample) -> torch.Tensor:
    """``num`` samples with the run's sample settings, drawn from per-sample generators so that a
    preview during training leaves the training RNG untouched. ``per_sample``: labels and context
    for those samples (ditlab.generation.generate)."""
    from ditlab.generation import generate  # sampling imports this module

    images, _ = generate(task, model, num, s.seed, batch_size=max(num, 1), sampler=s.sampler, steps=s.steps,
                         cfg_scale=s.cfg_scale, cfg_interval=s.cfg_interval, eta=s.eta, device=device,
                         autocast_dtype=autocast_dtype, conditions=conditions, **per_sample)
    return images


class ImageTask:
    def __init__(self, model: torch.nn.Module, objective: Objective, label_dropout: float = 0.0,
                 context_dropout: float = 0.0):
        self.model = model
        self.objective = objective
        self.label_dropout = label_dropout
        self.context_dropout = context_dropout  # drops the context and the label together (module docstring)
        self.spec = unwrap_model(model).streams[0]
        self.num_classes = model_num_classes(model)
        self.context_dim = unwrap_model(model).context_dim  # None: no context set

    @property
    def patch_sizes(self) -> dict[str, int]:
        return {STREAM: self.spec.patch_size}

    def training_loss(
        self,
        images: torch.Tensor,  # (B, C, H, W) float in [-1, 1]
        labels: Optional[torch.Tensor],
        label_drop: Optional[torch.Tensor],
        t: torch.Tensor,  # (B,) or (B, N) noise levels
        noise: torch.Tensor,
        loss_mask: Optional[torch.Tensor] = None,  # (B, N) bool
        context: Optional[torch.Tensor] = None,  # (B, M, D) with a context set
        context_mask: Optional[torch.Tensor] = None,  # (B, M) bool, True = real token
        context_drop: Optional[torch.Tensor] = None,  # (B,) bool: the learned null context instead
    ) -> torch.Tensor:
        """Per-sample loss (B,)."""
        labels = labels if self.num_classes else None
        kwargs = {}
        if self.context_dim is not None:
            kwargs = dict(context=context, context_mask=context_mask, context_drop=context_drop)

        def net(x_t, t_):
            return self.model(x_t, t_, labels=labels, label_drop=label_drop if self.num_classes else None, **kwargs)

        mask = {STREAM: loss_mask} if loss_mask is not None else None
        return self.objective.loss(net, {STREAM: images}, {STREAM: t}, {STREAM: noise}, self.patch_sizes, mask)

    @property
    def can_guide(self) -> bool:
        return self.num_classes > 0 or self.context_dim is not None

    def start(self, rng, steps: int, conditions: Optional[torch.Tensor] = None) -> tuple[dict, TimePath]:
        """Starting streams (noise from the per-sample RNG) and the time path of a sampler run."""
        if conditions is not None:
            raise ValueError("the image task takes no condition images")
        spec = self.spec
        x = {STREAM: rng.randn(spec.channels, spec.size, spec.size)}
        return x, single_stream_path(STREAM, self.objective.schedule.time_grid(steps))

    def loss_on_batch(self, images: torch.Tensor, labels: Optional[torch.Tensor],
                      context: Optional[torch.Tensor] = None, context_mask: Optional[torch.Tensor] = None
                      ) -> torch.Tensor:
        """Per-sample loss (B,) with noise levels, noise, label dropout and context dropout drawn from
        torch's global RNG (in this order, which resumed runs rely on)."""
        B = images.shape[0]
        t = self.objective.schedule.sample_time((B,), images.device)
        noise = torch.randn_like(images)
        label_drop = torch.rand(B, device=images.device) < self.label_dropout if self.num_classes else None
        context_drop = None
        if self.context_dim is not None:
            if context is None or context_mask is None:
                raise ValueError(f"this model cross-attends to a context set: the batch needs context "
                                 f"(B, M, {self.context_dim}) and context_mask (B, M) (data.context_path)")
            drop_both = torch.rand(B, device=images.device) < self.context_dropout
            if label_drop is not None:
                label_drop = label_drop | drop_both
            context_drop = context_drop_flags(drop_both, context_mask)
        return self.training_loss(images, labels, label_drop, t, noise, context=context, context_mask=context_mask,
                                  context_drop=context_drop)

    def preview(self, model, data, sample_cfg, device, autocast_dtype):
        """The run's sample grid: sample_cfg.grid_size images from ``model``; with a context set, for
        the contexts (and labels) of the first training images."""
        num, per_sample = sample_cfg.grid_size, {}
        if self.context_dim is not None:
            num = min(num, len(data.context_set))
            first = data.context_set.rows(slice(0, num))
            per_sample["context"] = (first.embeddings, first.mask)
            if self.num_classes:
                per_sample["labels"] = data.data.labels[:num]
        return preview_samples(self, model, sample_cfg, device, autocast_dtype, num, **per_sample), None

    def denoiser(self, labels: Optional[torch.Tensor], model: Optional[torch.nn.Module] = None,
                 context: Optional[tuple[torch.Tensor, torch.Tensor]] = None):
        """Conditional denoiser (x, t, drop) -> {name: (x0_hat, eps_hat)} for the samplers. ``drop``
        nulls the label and the context set together (see the module docstring).

        ``context``: (embeddings (B, M, D), mask (B, M)) on the device, for a model with a context set.
        """
        model = model if model is not None else self.model
        if self.context_dim is not None and context is None:
            raise ValueError(f"this model cross-attends to a context set of width {self.context_dim}: pass one "
                             "(ditlab sample --context FILE)")
        if self.context_dim is None and context is not None:
            raise ValueError("a context set was given, but this model was trained without one")

        def denoise(x, t, drop):
            kwargs = {}
            if self.num_classes:
                kwargs = dict(labels=repeat_labels(labels, drop.shape[0]), label_drop=drop)
            if context is not None:
                embeddings, mask = repeat_context(context, drop.shape[0])
                kwargs.update(context=embeddings, context_mask=mask, context_drop=context_drop_flags(drop, mask))
            return self.objective.denoised(model(x, t, **kwargs), x, t, self.patch_sizes)

        return denoise

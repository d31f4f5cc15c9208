"""Image generation task: a batch of images (+ labels) <-> one target stream named "image".

The task is the only place that knows pixels are uint8 in [0, 255] and the network sees [-1, 1].
"""
from __future__ import annotations

from typing import Optional

import torch

from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.paths import TimePath, single_stream_path
from ditlab.models.dit import DiT, StreamSpec, build_dit, parse_arch
from ditlab.train.ema import unwrap_model

STREAM = "image"


def image_stream(image_size: int, channels: int, arch: str) -> StreamSpec:
    _, _, _, patch = parse_arch(arch)
    if image_size % patch:
        raise ValueError(f"image size {image_size} is not divisible by the patch size {patch} of {arch}")
    return StreamSpec(STREAM, channels, image_size, patch)


def build_image_model(model_cfg, image_size: int, channels: int = 3) -> DiT:
    return build_dit(model_cfg, [image_stream(image_size, channels, model_cfg.arch)])


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


def preview_samples(task, model, s, device, autocast_dtype, num: int, conditions=None) -> torch.Tensor:
    """``num`` samples with the run's sample settings, drawn from per-sample generators so that a
    preview during training leaves the training RNG untouched."""
    from ditlab.sampling import generate  # sampling imports this module

    images, _ = generate(task, model, num, s.seed, batch_size=max(num, 1), sampler=s.sampler, steps=s.steps,
                         cfg_scale=s.cfg_scale, cfg_interval=s.cfg_interval, eta=s.eta, device=device,
                         autocast_dtype=autocast_dtype, conditions=conditions)
    return images


class ImageTask:
    def __init__(self, model: torch.nn.Module, objective: Objective, label_dropout: float = 0.0):
        self.model = model
        self.objective = objective
        self.label_dropout = label_dropout
        self.spec = unwrap_model(model).streams[0]
        self.num_classes = model_num_classes(model)

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
    ) -> torch.Tensor:
        """Per-sample loss (B,)."""
        labels = labels if self.num_classes else None

        def net(x_t, t_):
            return self.model(x_t, t_, labels=labels, label_drop=label_drop if self.num_classes else None)

        mask = {STREAM: loss_mask} if loss_mask is not None else None
        return self.objective.loss(net, {STREAM: images}, {STREAM: t}, {STREAM: noise}, self.patch_sizes, mask)

    @property
    def can_guide(self) -> bool:
        return self.num_classes > 0

    def start(self, rng, steps: int, conditions: Optional[torch.Tensor] = None) -> tuple[dict, TimePath]:
        """Starting streams (noise from the per-sample RNG) and the time path of a sampler run."""
        if conditions is not None:
            raise ValueError("the image task takes no condition images")
        spec = self.spec
        x = {STREAM: rng.randn(spec.channels, spec.size, spec.size)}
        return x, single_stream_path(STREAM, self.objective.schedule.time_grid(steps))

    def loss_on_batch(self, images: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-sample loss (B,) with noise levels, noise and label dropout drawn from torch's global
        RNG (in this order, which resumed runs rely on)."""
        B = images.shape[0]
        t = self.objective.schedule.sample_time((B,), images.device)
        noise = torch.randn_like(images)
        label_drop = torch.rand(B, device=images.device) < self.label_dropout if self.num_classes else None
        return self.training_loss(images, labels, label_drop, t, noise)

    def preview(self, model, data, sample_cfg, device, autocast_dtype):
        """The run's sample grid: sample_cfg.grid_size images from ``model``."""
        return preview_samples(self, model, sample_cfg, device, autocast_dtype, sample_cfg.grid_size), None

    def denoiser(self, labels: Optional[torch.Tensor], model: Optional[torch.nn.Module] = None):
        """Conditional denoiser (x, t, drop) -> {name: (x0_hat, eps_hat)} for the samplers."""
        model = model if model is not None else self.model

        def denoise(x, t, drop):
            kwargs = {}
            if self.num_classes:
                kwargs = dict(labels=repeat_labels(labels, drop.shape[0]), label_drop=drop)
            return self.objective.denoised(model(x, t, **kwargs), x, t, self.patch_sizes)

        return denoise

"""Super-resolution: the target image given its low-resolution copy as a condition stream.

The condition is a stream of its own (user note 000): its own patch embedding, a position grid
stretched onto the target's frame, its tokens before the target's, and its own noise level per
sample. That one mechanism carries three of the notes' techniques:
- clean condition: noise level 0;
- condition noise augmentation: level s ~ U(0, s_max) in training, a chosen s at sampling;
- condition dropout for CFG: the stream's tokens are replaced by the model's learned null tokens.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ditlab.data.subset import evaluation_subset
from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.paths import TimePath, single_stream_path, with_fixed_streams
from ditlab.models.dit import DiT, StreamSpec, build_dit, parse_arch
from ditlab.tasks.image.task import model_num_classes, preview_samples, repeat_labels, to_model_range
from ditlab.models.wrappers import unwrap_model

TARGET, COND = "image", "lowres"


def superres_streams(image_size: int, channels: int, arch: str, factor: int) -> list[StreamSpec]:
    _, _, _, patch = parse_arch(arch)
    low = image_size // factor
    if image_size % factor or low % patch:
        raise ValueError(f"image size {image_size} with task.factor={factor} gives a {low}-pixel condition, "
                         f"which the patch size {patch} of {arch} does not divide")
    # Condition first, as in the note (64 condition tokens before 256 target tokens).
    return [StreamSpec(COND, channels, low, patch, predict=False, pos_scale=float(factor)),
            StreamSpec(TARGET, channels, image_size, patch)]


def build_superres_model(model_cfg, image_size: int, channels: int, factor: int) -> DiT:
    return build_dit(model_cfg, superres_streams(image_size, channels, model_cfg.arch, factor))


def downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """The low-resolution view: factor x factor average pooling (in model range)."""
    return F.avg_pool2d(images, factor)


class SuperResTask:
    def __init__(self, model: torch.nn.Module, objective: Objective, task_cfg, label_dropout: float = 0.0):
        self.model, self.objective, self.cfg = model, objective, task_cfg
        self.label_dropout = label_dropout
        self.specs = {s.name: s for s in unwrap_model(model).streams}
        self.num_classes = model_num_classes(model)

    @property
    def patch_sizes(self) -> dict[str, int]:
        return {name: s.patch_size for name, s in self.specs.items()}

    can_guide = True  # guidance on the condition (and on the label, when there is one)

    def start(self, rng, steps: int, conditions: Optional[torch.Tensor] = None) -> tuple[dict, TimePath]:
        """Target noise plus the condition: ``conditions`` are the high-resolution uint8 images
        (B, C, H, W) whose downsampled copies condition the run (so results compare to them). The
        condition is held at noise level task.cond_noise_sample for the whole run."""
        spec = self.specs[TARGET]
        if self.cfg.cond_mode != "dummy" and conditions is None:
            raise ValueError("super-resolution sampling needs condition images (the high-resolution originals)")
        x_target = rng.randn(spec.channels, spec.size, spec.size)
        if self.cfg.cond_mode == "dummy":  # unconditional generation: the condition stream is masked out
            s = 0.0
            x_cond = torch.zeros(len(x_target), *self.specs[COND].shape, device=x_target.device)
        else:
            low = downsample(to_model_range(conditions), self.cfg.factor)
            s = float(self.cfg.cond_noise_sample)
            alpha, sigma = self.objective.schedule.alpha_sigma(torch.full((1,), s, device=low.device))
            x_cond = alpha * low + sigma * rng.randn(*low.shape[1:])
        path = with_fixed_streams(single_stream_path(TARGET, self.objective.schedule.time_grid(steps)), {COND: s})
        return {TARGET: x_target, COND: x_cond}, path

    def loss_on_batch(self, images: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-sample loss (B,) on the target; the condition is an input at its own noise level."""
        B, device = images.shape[0], images.device
        t = self.objective.schedule.sample_time((B,), device)
        noise = torch.randn_like(images)
        low = downsample(images, self.cfg.factor)
        s = torch.rand(B, device=device) * self.cfg.cond_noise_max  # exactly 0 when augmentation is off
        low_noise = torch.randn_like(low)
        cond_drop = torch.rand(B, device=device) < self.cfg.cond_dropout
        label_drop = torch.rand(B, device=device) < self.label_dropout if self.num_classes else None
        token_mask = None
        if self.cfg.cond_mode == "dummy":  # unconditional pretraining in the conditional layout
            low, token_mask = self._dummy_condition(low)

        def net(x_t, t_):
            return self.model(x_t, t_, labels=labels if self.num_classes else None, label_drop=label_drop,
                              stream_drop={COND: cond_drop}, token_mask=token_mask)

        # The objective noises every stream it is given at that stream's level (the condition at s,
        # which is the augmentation) and scores only the predicted stream's noised tokens.
        return self.objective.loss(net, {TARGET: images, COND: low}, {TARGET: t, COND: s},
                                   {TARGET: noise, COND: low_noise}, self.patch_sizes)

    def _dummy_condition(self, low: torch.Tensor):
        """Dummy tokens (noise or zeros) for a dummy_prob share of the batch; the rest masked out."""
        B, device = low.shape[0], low.device
        use_dummy = torch.rand(B, device=device) < self.cfg.dummy_prob
        dummy = torch.randn_like(low) if self.cfg.dummy_kind == "noise" else torch.zeros_like(low)
        low = torch.where(use_dummy[:, None, None, None], dummy, torch.zeros_like(low))
        return low, {COND: use_dummy[:, None].expand(B, self.specs[COND].num_tokens)}

    def _no_condition_mask(self, batch: int, device) -> dict:
        return {COND: torch.zeros(batch, self.specs[COND].num_tokens, dtype=torch.bool, device=device)}

    def preview(self, model, data, sample_cfg, device, autocast_dtype):
        """(low-res input, sample, original) triplets for the first training images, 4 per row."""
        num = min(sample_cfg.grid_size, 32, len(data.data.images))
        originals = data.data.images[evaluation_subset(len(data.data.images), num)]  # not one class folder
        samples = preview_samples(self, model, sample_cfg, device, autocast_dtype, num, conditions=originals)
        return superres_triplets(originals, samples, self.cfg.factor), 12

    def denoiser(self, labels: Optional[torch.Tensor], model: Optional[torch.nn.Module] = None):
        """Conditional denoiser (x, t, drop) for the samplers: `drop` nulls the low-resolution stream
        (and the label, for a class-conditional model) — guidance on the condition."""
        model = model if model is not None else self.model

        def denoise(x, t, drop):
            kwargs = {"stream_drop": {COND: drop}}
            if self.cfg.cond_mode == "dummy":  # an unconditional model: the condition stream is masked out
                kwargs["token_mask"] = self._no_condition_mask(drop.shape[0], drop.device)
            if self.num_classes:
                kwargs.update(labels=repeat_labels(labels, drop.shape[0]), label_drop=drop)
            return self.objective.denoised(model(x, t, **kwargs), x, t, self.patch_sizes)

        return denoise


def superres_triplets(originals: torch.Tensor, samples: torch.Tensor, factor: int) -> torch.Tensor:
    """uint8 (B, C, H, W) originals and samples -> (3B, C, H, W): low-res input (nearest-upsampled),
    sample, original, for each condition in turn (a grid a person can read left to right)."""
    low = F.avg_pool2d(originals.float(), factor).round()
    low = F.interpolate(low, scale_factor=factor, mode="nearest").to(torch.uint8)
    return torch.stack([low, samples.to(originals.device), originals], dim=1).flatten(0, 1)

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

import numpy as np
import torch
import torch.nn.functional as F

from ditlab.data.subset import evaluation_subset
from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.paths import TimePath, single_stream_path, with_fixed_streams
from ditlab.models.wrappers import unwrap_model
from ditlab.tasks.base import Conditions, SampleSettings, refuse_path
from ditlab.tasks.image.model import model_num_classes
from ditlab.tasks.image.task import (decoded_images, image_npz_arrays, repeat_labels,
                                     to_model_range, with_default_labels)
from ditlab.tasks.superres.model import COND, TARGET, downsample

class SuperResTask:
    kind = "superres"

    def __init__(self, model: torch.nn.Module, objective: Objective, task_cfg, label_dropout: float = 0.0):
        self.model, self.objective, self.cfg = model, objective, task_cfg
        self.label_dropout = label_dropout
        net = unwrap_model(model)
        self.specs = {s.name: s for s in net.streams}
        if COND not in self.specs:  # cross / branch / adaln: the condition is not a stream of the main path
            self.specs[COND] = net.cond_spec
        self.num_classes = model_num_classes(model)
        self.cond_scale = 1.0  # --cond-scale of the current generation (set by start)

    @property
    def has_cond_pathway(self) -> bool:
        """Whether --cond-scale means anything: a real condition (not an unconditional cond_mode=dummy run)."""
        return self.cfg.cond_mode != "dummy"

    @property
    def patch_sizes(self) -> dict[str, int]:
        return {name: s.patch_size for name, s in self.specs.items()}

    can_guide = True  # guidance on the condition (and on the label, when there is one)

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

    def preview_conditions(self, data, num: int) -> Conditions:
        """The first training images, spread over the classes: previews are (low-res input, sample,
        original) triplets."""
        num = min(num, 32, len(data.data.images))
        pick = evaluation_subset(len(data.data.images), num)  # not one class folder
        return {"images": data.data.images[pick]}  # labels: i mod K, as in `ditlab sample`

    def preview_figure(self, outputs: dict, conditions: Conditions):
        return superres_triplets(conditions["images"].cpu(), outputs["images"], self.cfg.factor), 12

    # ---- generation -----------------------------------------------------------------------------
    def batch_conditions(self, indices: torch.Tensor, given: Conditions) -> Conditions:
        if self.cfg.cond_mode != "dummy" and "images" not in given:
            raise ValueError("super-resolution sampling needs condition images: pass --data DATASET (the "
                             "high-resolution originals whose downsampled copies are the inputs)")
        return with_default_labels(indices, given, self.num_classes)

    def start(self, rng, settings: SampleSettings, cond: Conditions) -> tuple[dict, TimePath]:
        """Target noise plus the condition: ``cond["images"]`` are the high-resolution uint8 images
        (B, C, H, W) whose downsampled copies condition the run (so results compare to them). The
        condition is held at noise level task.cond_noise_sample for the whole run."""
        refuse_path(settings, "superres")
        self.cond_scale = float(getattr(settings, "cond_scale", 1.0))  # read by denoiser (the same batch)
        spec = self.specs[TARGET]
        x_target = rng.randn(spec.channels, spec.size, spec.size)
        if self.cfg.cond_mode == "dummy":  # unconditional generation: the condition stream is masked out
            s = 0.0
            x_cond = torch.zeros(len(x_target), *self.specs[COND].shape, device=x_target.device)
        else:
            low = downsample(to_model_range(cond["images"]), self.cfg.factor)
            s = float(self.cfg.cond_noise_sample)
            alpha, sigma = self.objective.schedule.alpha_sigma(torch.full((1,), s, device=low.device))
            x_cond = alpha * low + sigma * rng.randn(*low.shape[1:])
        grid = self.objective.schedule.time_grid(settings.steps)
        path = with_fixed_streams(single_stream_path(TARGET, grid), {COND: s})
        return {TARGET: x_target, COND: x_cond}, path

    def denoiser(self, model: torch.nn.Module, cond: Conditions):
        """(x, t, drop) for the samplers: ``drop`` nulls the low-resolution stream (and the label, for
        a class-conditional model): guidance on the condition."""
        labels = cond.get("labels")
        cond_scale = self.cond_scale

        def denoise(x, t, drop):
            kwargs = {"stream_drop": {COND: drop}}
            if cond_scale != 1.0:  # the condition pathway's strength (ditlab.models.control); 1: today's call
                kwargs["cond_scale"] = cond_scale
            if self.cfg.cond_mode == "dummy":  # an unconditional model: the condition stream is masked out
                kwargs["token_mask"] = self._no_condition_mask(drop.shape[0], drop.device)
            if self.num_classes:
                kwargs.update(labels=repeat_labels(labels, drop.shape[0]), label_drop=drop)
            return self.objective.denoised(model(x, t, **kwargs), x, t, self.patch_sizes)

        return denoise

    def decode(self, streams: dict, cond: Conditions) -> dict[str, torch.Tensor]:
        return decoded_images(streams[TARGET], cond)

    def npz_arrays(self, outputs: dict) -> dict[str, np.ndarray]:
        return image_npz_arrays(outputs)

    def sample_meta(self, settings: SampleSettings) -> dict:
        """Facts of these samples for ditlab_meta (tasks/base.py)."""
        return {"factor": self.cfg.factor}


def superres_triplets(originals: torch.Tensor, samples: torch.Tensor, factor: int) -> torch.Tensor:
    """uint8 (B, C, H, W) originals and samples -> (3B, C, H, W): low-res input (nearest-upsampled),
    sample, original, for each condition in turn (a grid a person can read left to right)."""
    low = F.avg_pool2d(originals.float(), factor).round()
    low = F.interpolate(low, scale_factor=factor, mode="nearest").to(torch.uint8)
    return torch.stack([low, samples.to(originals.device), originals], dim=1).flatten(0, 1)

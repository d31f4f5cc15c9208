"""LIFT: an image and its average-pooled copy generated jointly, each with its own noise level.

Two predicted streams (user note 004; docs/lift.md): "image" at full resolution and "lowres", its
``task.factor`` x average-pooled copy (32 + 16 pixels for CIFAR-10), each with its own patch
embedding, its own position grid (the coarse one stretched onto the fine frame, as in superres) and
its own noise level per sample. The low-resolution tokens come first.

Training draws (t_hi, t_lo) by ``lift.train_mode`` (ditlab.tasks.lift.times) and minimises
loss_hi + beta * loss_lo, each a per-stream mean. Sampling walks a path through the (t_hi, t_lo)
grid (ditlab.tasks.lift.paths) and returns the "image" stream, so ``ditlab sample`` and
``ditlab fid`` work as for single-scale runs.
"""
from __future__ import annotations

import copy

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.paths import TimePath
from ditlab.diffusion.scale_shift import ShiftedSchedule, scale_shift
from ditlab.models.wrappers import unwrap_model
from ditlab.tasks.base import Conditions, SampleSettings
from ditlab.tasks.image.model import model_num_classes
from ditlab.tasks.image.task import (decoded_images, image_npz_arrays, repeat_labels, to_model_range,
                                     with_default_labels)
from ditlab.tasks.lift.errors import load_node_errors
from ditlab.tasks.lift.model import ERRORS_FILE, HI, LO
from ditlab.tasks.lift.paths import CLEAN_LO_PATHS, DP_PATHS, PATH_NAMES, build_lift_path
from ditlab.tasks.lift.times import draw_lift_times, mixture_weights
from ditlab.tasks.superres.model import downsample

def lift_objective(objective: Objective, factor: int, shift: bool) -> Objective:
    """The objective with the low resolution's own (logSNR-shifted) schedule when ``shift``."""
    if not shift:
        return objective
    lo_schedule = ShiftedSchedule(objective.schedule, scale_shift(factor))
    shifted = copy.copy(objective)  # every option of the objective (loss space, weighting) kept
    shifted.stream_schedules = {**objective.stream_schedules, LO: lo_schedule}
    return shifted


class LiftTask:
    kind = "lift"

    def __init__(self, model: torch.nn.Module, objective: Objective, lift_cfg, factor: int,
                 label_dropout: float = 0.0):
        self.model, self.cfg, self.factor = model, lift_cfg, factor
        self.objective = lift_objective(objective, factor, lift_cfg.schedule_shift)
        self.label_dropout = label_dropout
        self.specs = {s.name: s for s in unwrap_model(model).streams}
        self.num_classes = model_num_classes(model)
        self.weights = mixture_weights(lift_cfg) if lift_cfg.train_mode == "mixture" else None
        if lift_cfg.beta < 0:
            raise ValueError(f"lift.beta must be >= 0, got {lift_cfg.beta}")
        self.path_name = lift_cfg.sample_path
        self.errors = None  # NodeErrors for the dp-* paths, see use_path
        self.cascade = None  # the low-resolution generator of --path cascade, see use_cascade

    @property
    def patch_sizes(self) -> dict[str, int]:
        return {name: s.patch_size for name, s in self.specs.items()}

    @property
    def can_guide(self) -> bool:
        return self.num_classes > 0

    # ---- training -------------------------------------------------------------------------------
    def loss_on_batch(self, images: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-sample loss_hi + beta * loss_lo (B,); draws in a fixed order from the global RNG."""
        B, device = images.shape[0], images.device
        t_hi, t_lo = draw_lift_times(self.cfg.train_mode, B, self.objective.schedule, device, self.weights)
        low = downsample(images, self.factor)
        noise_hi, noise_lo = torch.randn_like(images), torch.randn_like(low)
        label_drop = torch.rand(B, device=device) < self.label_dropout if self.num_classes else None
        losses = self.stream_losses(images, low, t_hi, t_lo, noise_hi, noise_lo, labels, label_drop)
        return losses[HI] + self.cfg.beta * losses[LO]

    def stream_losses(self, images, low, t_hi, t_lo, noise_hi, noise_lo, labels=None, label_drop=None) -> dict:
        """{stream: per-sample loss (B,)}; a stream at t = 0 carries no loss (it is an input)."""
        def net(x_t, t_):
            return self.model(x_t, t_, labels=labels if self.num_classes else None, label_drop=label_drop)

        return self.objective.stream_losses(net, {HI: images, LO: low}, {HI: t_hi, LO: t_lo},
                                            {HI: noise_hi, LO: noise_lo}, self.patch_sizes)

    # ---- sampling -------------------------------------------------------------------------------
    def use_errors(self, errors) -> None:
        """The measured per-node errors the dp-* paths plan on (ditlab.tasks.lift.errors.NodeErrors)."""
        self.errors = errors

    def use_cascade(self, source) -> None:
        """The low-resolution run that generates each batch's low resolution on --path cascade
        (ditlab.tasks.lift.cascade.CascadeSource; None detaches it)."""
        self.cascade = source

    def load_errors(self, run_dir) -> bool:
        """Read RUN/lift_errors.npz if it exists; True when it did."""
        path = Path(run_dir) / ERRORS_FILE
        if path.exists():
            self.errors = load_node_errors(path)
        return path.exists()

    def path(self, steps: int, name: Optional[str] = None) -> TimePath:
        name = name or self.path_name
        if name in DP_PATHS and self.errors is None:
            raise ValueError(f"--path {name} needs the model's per-node errors: run `ditlab lift errors RUN "
                             f"--data HELD_OUT` first (it writes RUN/{ERRORS_FILE})")
        return build_lift_path(name, self.objective.schedule, steps, HI, LO, self.errors,
                               self.objective.schedule_of(LO), self.cfg.dp_snr_max)

    def batch_conditions(self, indices: torch.Tensor, given: Conditions) -> Conditions:
        return with_default_labels(indices, given, self.num_classes)

    def check_inputs(self, settings: SampleSettings, given) -> str:
        """The path sampled (settings.path, else the run's lift.sample_path), after checking that the
        inputs given (the names of the conditions ``given``, the attached low-resolution run) are the
        ones it takes: ValueError naming the flags. ditlab.generation.generate calls it before any batch."""
        name = settings.path or self.path_name
        if name not in PATH_NAMES and not name.startswith("shift:"):
            raise ValueError(f"--path {name!r}: choose one of {', '.join(PATH_NAMES)}")
        if self.cascade is not None:
            if name != "cascade":
                raise ValueError(f"--lo-run applies to --path cascade only (this is --path {name})")
            self.cascade.check(settings)
        wanted = CLEAN_LO_PATHS.get(name)
        if wanted is not None and wanted not in given and not (name == "cascade" and self.cascade is not None):
            raise ValueError("--path lo-oracle needs condition images (--data DATASET)" if name == "lo-oracle" else
                             "--path cascade needs --lo-run RUN_LO: a task.kind=image run at the low resolution "
                             "generates the low resolution")
        for key, path in (("images", "lo-oracle"), ("lowres", "cascade")):
            if key in given and key != wanted:
                if name == "cascade":  # key == "images"
                    raise ValueError("--data applies to --path lo-oracle only; --path cascade generates its low "
                                     "resolution with --lo-run")
                flag = "--data" if key == "images" else "--lo-run"
                raise ValueError(f"{flag} applies to --path {path} only (this is --path {name}): the other LIFT paths "
                                 "generate both scales")
        return name

    def start(self, rng, settings: SampleSettings, cond: Conditions) -> tuple[dict, TimePath]:
        """Pure noise for both scales (per-sample RNG) and the chosen path (``check_inputs``). The low
        resolution is held clean on two paths: lo-oracle takes ``cond["images"]``, uint8
        high-resolution images whose pooled copies are the low resolution; cascade takes
        ``cond["lowres"]``, uint8 low-resolution images as they are, or else generates them for this
        batch's sample indices with the attached low-resolution run (``use_cascade``;
        ditlab.tasks.lift.cascade). Both scales' noise is drawn on every path, so sample i's
        high-resolution noise is the same on lo-oracle, cascade and the others."""
        name = self.check_inputs(settings, cond)
        x = {HI: rng.randn(*self.specs[HI].shape), LO: rng.randn(*self.specs[LO].shape)}
        if name == "lo-oracle":
            x[LO] = downsample(to_model_range(cond["images"]), self.factor)
        elif name == "cascade":
            low = cond["lowres"] if "lowres" in cond else self.cascade.lowres(rng, settings, cond)
            if tuple(low.shape[1:]) != self.specs[LO].shape:
                raise ValueError(f"--lo-run: the low resolution given is {tuple(low.shape[1:])} per sample; this LIFT "
                                 f"run's low-resolution stream is {self.specs[LO].shape}")
            x[LO] = to_model_range(low)
        return x, self.path(settings.steps, name)

    def denoiser(self, model: torch.nn.Module, cond: Conditions):
        """(x, t, drop) -> {stream: (x0_hat, eps_hat)} for both scales; ``drop`` nulls the label."""
        labels = cond.get("labels")

        def denoise(x, t, drop):
            kwargs = {}
            if self.num_classes:
                kwargs = dict(labels=repeat_labels(labels, drop.shape[0]), label_drop=drop)
            return self.objective.denoised(model(x, t, **kwargs), x, t, self.patch_sizes)

        return denoise

    def decode(self, streams: dict, cond: Conditions) -> dict[str, torch.Tensor]:
        return decoded_images(streams[HI], cond)  # the full resolution: `ditlab fid` reads it as for images

    def npz_arrays(self, outputs: dict) -> dict[str, np.ndarray]:
        return image_npz_arrays(outputs)

    def sample_meta(self, settings: SampleSettings) -> dict:
        """Facts of these samples for ditlab_meta (tasks/base.py)."""
        return {"factor": self.factor, "path": settings.path or self.path_name}

    def preview_conditions(self, data, num: int) -> Conditions:
        return {}

    def preview_figure(self, outputs: dict, conditions: Conditions):
        return outputs["images"], None

    def preview_path(self) -> str:
        """The configured path, or the diagonal while a dp-* path has no measured errors yet (during
        training) or the path needs a given low resolution (lo-oracle, cascade)."""
        keep = self.path_name
        return "diagonal" if (keep in DP_PATHS and self.errors is None) or keep in CLEAN_LO_PATHS else keep

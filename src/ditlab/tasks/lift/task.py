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

from pathlib import Path
from typing import Optional

import torch

from ditlab.tasks.lift.paths import DP_PATHS, build_lift_path
from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.paths import TimePath
from ditlab.diffusion.scale_shift import ShiftedSchedule, scale_shift
from ditlab.models.dit import DiT, StreamSpec, build_dit, parse_arch
from ditlab.tasks.image.task import model_num_classes, preview_samples, repeat_labels, to_model_range
from ditlab.tasks.lift.times import draw_lift_times, mixture_weights
from ditlab.tasks.superres.task import downsample
from ditlab.models.wrappers import unwrap_model

HI, LO = "image", "lowres"  # HI is the image stream's name, so ditlab.generation returns it
ERRORS_FILE = "lift_errors.npz"  # per-node errors of a run, for the dp-* paths (ditlab lift errors)


def lift_streams(image_size: int, channels: int, arch: str, factor: int) -> list[StreamSpec]:
    _, _, _, patch = parse_arch(arch)
    low = image_size // factor
    if factor < 2 or image_size % factor or low % patch:
        raise ValueError(f"image size {image_size} with task.factor={factor} gives a {low}-pixel low resolution, "
                         f"which the patch size {patch} of {arch} does not divide (task.factor must be >= 2)")
    return [StreamSpec(LO, channels, low, patch, predict=True, pos_scale=float(factor)),
            StreamSpec(HI, channels, image_size, patch)]


def build_lift_model(model_cfg, image_size: int, channels: int, factor: int) -> DiT:
    return build_dit(model_cfg, lift_streams(image_size, channels, model_cfg.arch, factor))


def lift_objective(objective: Objective, factor: int, shift: bool) -> Objective:
    """The objective with the low resolution's own (logSNR-shifted) schedule when ``shift``."""
    if not shift:
        return objective
    lo_schedule = ShiftedSchedule(objective.schedule, scale_shift(factor))
    return Objective(objective.schedule, objective.prediction, {**objective.stream_schedules, LO: lo_schedule})


class LiftTask:
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
    def use_path(self, name: str, errors=None) -> None:
        """Sample along path ``name`` from now on; dp-* paths need the run's NodeErrors."""
        if name in DP_PATHS and errors is None and self.errors is None:
            raise ValueError(f"path {name} needs the model's per-node errors: run `ditlab lift errors RUN` "
                             f"(it writes RUN/{ERRORS_FILE})")
        self.path_name = name
        if errors is not None:
            self.errors = errors

    def load_errors(self, run_dir) -> bool:
        """Read RUN/lift_errors.npz if it exists; True when it did."""
        from ditlab.tasks.lift.errors import load_node_errors

        path = Path(run_dir) / ERRORS_FILE
        if path.exists():
            self.errors = load_node_errors(path)
        return path.exists()

    def path(self, steps: int, name: Optional[str] = None) -> TimePath:
        return build_lift_path(name or self.path_name, self.objective.schedule, steps, HI, LO, self.errors,
                               self.objective.schedule_of(LO), self.cfg.dp_snr_max)

    def start(self, rng, steps: int, conditions: Optional[torch.Tensor] = None) -> tuple[dict, TimePath]:
        """Pure noise for both scales (per-sample RNG) and the chosen path. The lo-oracle path takes
        ``conditions``, uint8 high-resolution images whose pooled copies are the (clean) low resolution."""
        oracle = self.path_name == "lo-oracle"
        if oracle != (conditions is not None):
            raise ValueError("the lo-oracle path needs condition images (ditlab sample --cond DATASET)" if oracle else
                             "the lift task generates both scales: condition images go with --path lo-oracle only")
        x = {HI: rng.randn(*self.specs[HI].shape), LO: rng.randn(*self.specs[LO].shape)}
        if oracle:
            x[LO] = downsample(to_model_range(conditions), self.factor)
        return x, self.path(steps)

    def denoiser(self, labels: Optional[torch.Tensor], model: Optional[torch.nn.Module] = None):
        """(x, t, drop) -> {stream: (x0_hat, eps_hat)} for both scales; ``drop`` nulls the label."""
        model = model if model is not None else self.model

        def denoise(x, t, drop):
            kwargs = {}
            if self.num_classes:
                kwargs = dict(labels=repeat_labels(labels, drop.shape[0]), label_drop=drop)
            return self.objective.denoised(model(x, t, **kwargs), x, t, self.patch_sizes)

        return denoise

    def preview(self, model, data, sample_cfg, device, autocast_dtype):
        """The run's sample grid (high resolution), on the configured path, or the diagonal while a
        dp-* path has no measured errors yet (during training)."""
        keep = self.path_name
        if (keep in DP_PATHS and self.errors is None) or keep == "lo-oracle":
            self.path_name = "diagonal"
        try:
            return preview_samples(self, model, sample_cfg, device, autocast_dtype, sample_cfg.grid_size), None
        finally:
            self.path_name = keep

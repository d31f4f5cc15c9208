"""Scene task (user note 001): generate K points on one object's surface given the whole scene.

The target is one token stream of K points (a set: no positions). The scene is a context set of
P points (xyz + a flag marking the target object's points), of varying size, padded and masked;
the network reaches it only through cross-attention, so the padding mask is the only place
padding is handled. For classifier-free guidance the context set is dropped (the learned null
element, chosen with torch.where) with probability task.cond_dropout in training, and the sampler's
``drop`` flag selects the null at sampling time.

Coordinates (scene.frame): the world frame, or a frame centred on the marked points and scaled by
their RMS radius. The second is the usual object-centric normalisation of point-cloud models: it
takes the object's location and overall size from the input, so the network spends its capacity on
the surface itself, which it still learns only through cross-attention to the scene.

With scene.describe_target a second context set, "target", describes the target (its kind and size
parameters, a few tokens; ditlab.tasks.scene.data.describe_targets). Each set has its own mask and its
own null; in training the scene is dropped with probability task.cond_dropout and, independently, the
description with its model.contexts entry's cfg_dropout (default task.cond_dropout), so the model sees
all four combinations and compositional guidance (--cfg-context scene=W target=W) has trained passes.
"""
from __future__ import annotations

import numpy as np
import torch

from ditlab.diffusion.guidance import drop_flags
from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.paths import TimePath, single_stream_path
from ditlab.models.wrappers import unwrap_model
from ditlab.tasks.base import Conditions, SampleSettings, refuse_path
from ditlab.tasks.scene.model import DESCRIBE_SET, SCENE_SET, STREAM


def target_frame(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre (B, 1, 3) and size (B, 1, 1) of each scene's marked points: their mean and RMS distance
    to it, from real points only. A scene with no marked point keeps the world frame (0, 1)."""
    weight = features[..., 3:4] * mask[..., None]  # (B, P, 1): target flag of real points
    count = weight.sum(1, keepdim=True)  # (B, 1, 1)
    has_target = count > 0
    count = count.clamp_min(1.0)
    center = (features[..., :3] * weight).sum(1, keepdim=True) / count
    msd = (((features[..., :3] - center) ** 2).sum(-1, keepdim=True) * weight).sum(1, keepdim=True) / count
    size = msd.sqrt().clamp_min(1e-3)  # a single marked point has radius 0
    return torch.where(has_target, center, 0.0), torch.where(has_target, size, 1.0)


def repeat_context(features: torch.Tensor, mask: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Guidance stacks conditional and unconditional passes into one batch of k * B: repeat the scenes."""
    k = batch // features.shape[0]
    return features.repeat(k, 1, 1), mask.repeat(k, 1)


class SceneTask:
    kind = "scene"
    patch_sizes = {STREAM: 1}
    can_guide = True  # guidance on the scene context
    num_classes = 0

    def __init__(self, model: torch.nn.Module, objective: Objective, cond_dropout: float = 0.0,
                 coord_scale: float = 1.0, frame: str = "world", describe_dropout: float | None = None,
                 trained_dropout: dict[str, float] | None = None):
        if coord_scale <= 0:
            raise ValueError(f"scene.coord_scale must be positive, got {coord_scale}")
        if frame not in ("world", "target"):
            raise ValueError(f"scene.frame must be 'world' or 'target', got {frame!r}")
        self.model, self.objective = model, objective
        self.cond_dropout = cond_dropout
        self.coord_scale, self.frame = coord_scale, frame
        self.spec = unwrap_model(model).streams[0]
        self.describe = getattr(unwrap_model(model), "describe_set", None) is not None
        self.describe_dropout = cond_dropout if describe_dropout is None else describe_dropout
        # The run's own drop probabilities of each set (the ones above are 0 outside training).
        self.trained_dropout = dict(trained_dropout or {SCENE_SET: self.cond_dropout,
                                                       DESCRIBE_SET: self.describe_dropout})

    @property
    def context_sets(self) -> tuple[str, ...]:
        """Names of the context sets for --cfg-context."""
        return (SCENE_SET, DESCRIBE_SET) if self.describe else (SCENE_SET,)

    def check_cfg_context(self, name: str) -> None:
        """--cfg-context NAME=W with both sets: warn when this run's config never dropped NAME (probability
        0; an earlier stage of train.init_from may have). With the scene alone, alone = all."""
        if self.describe and self.trained_dropout.get(name, 0.0) == 0.0:
            import warnings

            what = "task.cond_dropout" if name == SCENE_SET else f"the model.contexts cfg_dropout of {DESCRIBE_SET!r}"
            warnings.warn(f"--cfg-context {name}=W: {what} is 0 in this run, so training never dropped the set "
                          f"{name!r}; the guidance term of that pass may be meaningless", stacklevel=2)

    def _model_frame(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(origin (B, 1, 3), unit (B, 1, 1)) with model coordinates = (world - origin) / unit."""
        if self.frame == "target":
            center, size = target_frame(features, mask)
            return center, size / self.coord_scale
        B = features.shape[0]
        return (features.new_zeros(B, 1, 3), features.new_full((B, 1, 1), 1.0 / self.coord_scale))

    @staticmethod
    def _scene_in_frame(features: torch.Tensor, origin: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """Scene features in model coordinates: xyz moved and scaled, the other channels unchanged."""
        return torch.cat([(features[..., :3] - origin) / unit, features[..., 3:]], dim=-1)

    def loss_on_batch(self, features: torch.Tensor, mask: torch.Tensor, target_points: torch.Tensor,
                      describe: torch.Tensor | None = None, describe_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample loss (B,): features (B, P, F), mask (B, P), target_points (B, K, 3).

        Noise levels, noise and context dropout come from torch's global RNG, in this order (resume
        relies on it). The dropout flag always goes through torch.where, even at probability 0,
        so every step uses every parameter (DDP without find_unused_parameters).
        """
        B, device = target_points.shape[0], target_points.device
        t = self.objective.schedule.sample_time((B,), device)
        noise = torch.randn_like(target_points)
        drop = torch.rand(B, device=device) < self.cond_dropout
        kwargs = {}
        if self.describe:  # drawn after the one-set draws: one-set runs keep their random numbers
            if describe is None or describe_mask is None:
                raise ValueError("this scene model has a target description: the batch needs describe, describe_mask")
            describe_drop = torch.rand(B, device=device) < self.describe_dropout
            kwargs = dict(describe=describe, describe_mask=describe_mask)
            drop = {"": drop, DESCRIBE_SET: describe_drop}
        origin, unit = self._model_frame(features, mask)
        context = self._scene_in_frame(features, origin, unit)

        def net(x_t, t_):
            return self.model(x_t, t_, context=context, context_mask=mask, context_drop=drop, **kwargs)

        x0 = {STREAM: (target_points - origin) / unit}
        return self.objective.loss(net, x0, {STREAM: t}, {STREAM: noise}, self.patch_sizes)

    # ---- generation: conditions are scenes {"features": (B, P, F) world coordinates, "mask": (B, P)} ----
    def batch_conditions(self, indices: torch.Tensor, given: Conditions) -> Conditions:
        if "features" not in given or "mask" not in given:
            raise ValueError("scene sampling needs scenes: conditions 'features' (B, P, F) and 'mask' (B, P)")
        if self.describe and ("describe" not in given or "describe_mask" not in given):
            raise ValueError("this scene model has a target description: conditions 'describe' (B, L, 2) and "
                             "'describe_mask' (B, L) (SceneSet.conditions)")
        return given

    def start(self, rng, settings: SampleSettings, cond: Conditions) -> tuple[dict, TimePath]:
        """Starting noise (one generator per sample) and the time path of a sampler run."""
        refuse_path(settings, "scene")
        x = {STREAM: rng.randn(self.spec.size, self.spec.channels)}  # (B, K, 3)
        return x, single_stream_path(STREAM, self.objective.schedule.time_grid(settings.steps))

    def denoiser(self, model: torch.nn.Module, cond: Conditions):
        """(x, t, drop) -> {name: (x0_hat, eps_hat)} in model coordinates; ``drop`` nulls the scene."""
        features, mask = cond["features"], cond["mask"]
        features = self._scene_in_frame(features, *self._model_frame(features, mask))

        def denoise(x, t, drop):
            # drop: (B,) every set, or a dict (ditlab.diffusion.guidance.drop_flags): "scene", "target", "all"
            scene_drop = drop_flags(drop, SCENE_SET)
            ctx, ctx_mask = repeat_context(features, mask, scene_drop.shape[0])
            kwargs = {"context_drop": scene_drop}
            if self.describe:
                desc, desc_mask = repeat_context(cond["describe"], cond["describe_mask"], scene_drop.shape[0])
                kwargs = dict(describe=desc, describe_mask=desc_mask,
                              context_drop={"": scene_drop, DESCRIBE_SET: drop_flags(drop, DESCRIBE_SET)})
            return self.objective.denoised(model(x, t, context=ctx, context_mask=ctx_mask, **kwargs),
                                           x, t, self.patch_sizes)

        return denoise

    def decode(self, streams: dict, cond: Conditions) -> dict[str, torch.Tensor]:
        """The K points (B, K, 3) in world coordinates, with the scenes they were generated for."""
        origin, unit = self._model_frame(cond["features"], cond["mask"])
        return {"points": streams[STREAM] * unit + origin, "scene_features": cond["features"],
                "scene_mask": cond["mask"]}

    def npz_arrays(self, outputs: dict) -> dict[str, np.ndarray]:
        """``points`` (N, K, 3), ``scene_features`` (N, P, F) and ``scene_mask`` (N, P) bool."""
        return {k: outputs[k].numpy() for k in ("points", "scene_features", "scene_mask")}

    def sample_meta(self, settings: SampleSettings) -> dict:
        """Facts of these samples for ditlab_meta (tasks/base.py)."""
        return {}

    def preview_conditions(self, data, num: int) -> Conditions:
        """The first training scenes."""
        num = min(num, 6)
        cond = data.scenes.conditions(num)
        return cond if self.describe else {"features": cond["features"], "mask": cond["mask"]}

    def preview_figure(self, outputs: dict, conditions: Conditions):
        """A figure of the scenes with generated (red) vs the target (blue) points."""
        from ditlab.tasks.scene.plot import figure_array, scene_figure

        fig = scene_figure(outputs["scene_features"], outputs["scene_mask"], outputs["points"])
        return figure_array(fig)[None], 1

"""Fixed sets of random scenes as padded tensors: the training data of the scene task and its
held-out evaluation scenes.

A set is generated once from a seed (the same seed gives the same scenes on every machine and on
resume), padded to its longest point cloud and kept on the device, so a training batch is a
gather with no loader and no host sync. For each scene the set stores a pool of surface samples
of the target object; every step draws a fresh K of them, so the model learns the surface rather
than one fixed set of K points.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ditlab.tasks.scene.scenes import Primitive, collate, make_scene


@dataclass
class SceneSet:
    features: torch.Tensor  # (N, Pmax, 4) xyz + target flag, zero where padded
    mask: torch.Tensor  # (N, Pmax) bool, True = real point
    surface: torch.Tensor  # (N, R, 3) samples on each scene's target surface
    targets: list[Primitive]  # each scene's target object (exact surface, for the metrics)

    def __len__(self) -> int:
        return len(self.targets)


def check_scene_config(scene_cfg) -> None:
    """Reject settings that would give empty or degenerate scenes, naming the key."""
    lo, hi = scene_cfg.objects
    if not 1 <= lo <= hi:
        raise ValueError(f"scene.objects must satisfy 1 <= lo <= hi, got {scene_cfg.objects}")
    lo, hi = scene_cfg.points_per_object
    if not 1 <= lo <= hi:
        raise ValueError(f"scene.points_per_object must satisfy 1 <= lo <= hi, got {scene_cfg.points_per_object}")
    lo, hi = scene_cfg.object_size
    if not 0 < lo <= hi:
        raise ValueError(f"scene.object_size must satisfy 0 < lo <= hi, got {scene_cfg.object_size}")
    if scene_cfg.num_target_points < 1:
        raise ValueError(f"scene.num_target_points must be >= 1, got {scene_cfg.num_target_points}")
    if scene_cfg.target_pool < scene_cfg.num_target_points:
        raise ValueError(f"scene.target_pool ({scene_cfg.target_pool}) must be at least scene.num_target_points "
                         f"({scene_cfg.num_target_points}): each step draws that many distinct pool samples")


def make_scene_set(scene_cfg, num: int, seed: int, pool: int) -> SceneSet:
    """``num`` scenes from ``seed``, each with a uniformly chosen target and ``pool`` surface samples of it."""
    check_scene_config(scene_cfg)
    if num < 1:
        raise ValueError(f"a scene set needs at least one scene, got {num}")
    g = torch.Generator().manual_seed(seed)
    scenes = [make_scene(g, tuple(scene_cfg.objects), tuple(scene_cfg.points_per_object),
                         size=tuple(scene_cfg.object_size)) for _ in range(num)]
    targets = [int(torch.randint(len(s.primitives), (1,), generator=g)) for s in scenes]
    batch = collate(scenes, targets, pool, g)
    return SceneSet(batch.features, batch.mask, batch.target_points, batch.target_primitives)


def draw_from_pool(surface: torch.Tensor, k: int) -> torch.Tensor:
    """K distinct samples per scene from (B, R, 3) pools, from torch's global RNG (saved in checkpoints)."""
    B, R, _ = surface.shape
    pick = torch.rand(B, R, device=surface.device).topk(k, dim=1).indices  # (B, K) distinct
    return surface.gather(1, pick[..., None].expand(B, k, 3))


class SceneTrainData:
    """The TrainData of task.kind=scene (see ditlab.tasks.base)."""

    def __init__(self, scenes: SceneSet, num_target_points: int):
        self.scenes = scenes  # CPU copy: preview scenes
        self.k = num_target_points
        self.features, self.mask, self.surface = scenes.features, scenes.mask, scenes.surface
        self.num_examples = len(scenes)
        self.info = {"num_target_points": num_target_points, "context_channels": scenes.features.shape[-1],
                     "max_points": scenes.features.shape[1], "num_scenes": len(scenes)}

    def to(self, device: torch.device) -> "SceneTrainData":
        self.features, self.mask, self.surface = (t.to(device) for t in (self.scenes.features, self.scenes.mask,
                                                                          self.scenes.surface))
        return self

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": self.features[idx], "mask": self.mask[idx],
                "target_points": draw_from_pool(self.surface[idx], self.k)}


def load_scene_train_data(cfg, progress: bool = True) -> SceneTrainData:
    s = cfg.scene
    return SceneTrainData(make_scene_set(s, s.num_scenes, s.seed, s.target_pool), s.num_target_points)


def load_eval_scenes(scene_cfg, num: int, pool: int) -> SceneSet:
    """Held-out scenes: drawn from scene.eval_seed, which must differ from the training seed."""
    if scene_cfg.eval_seed == scene_cfg.seed:
        raise ValueError(f"scene.eval_seed equals scene.seed ({scene_cfg.seed}): evaluation scenes would be "
                         "training scenes")
    return make_scene_set(scene_cfg, num, scene_cfg.eval_seed, pool)

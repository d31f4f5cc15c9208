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

from ditlab.tasks.scene.scenes import KINDS, Primitive, collate, make_scene

DESCRIBE_TOKENS = 4  # kind + up to 3 size parameters (box: hx, hy, hz)


def describe_targets(targets: list[Primitive]) -> tuple[torch.Tensor, torch.Tensor]:
    """The target descriptions (scene.describe_target): (N, 4, 2) rows of (slot, value) and their mask
    (N, 4). Token 0 = (kind id in KINDS, 0), token j = (j, size parameter j - 1): a sphere has 2 real
    tokens, a cylinder 3, a box 4 (ditlab.models.point_set.DescriptionEmbed). A function of the target
    drawn with the scene, so it takes no random numbers: scene sets stay as they were."""
    desc = torch.zeros(len(targets), DESCRIBE_TOKENS, 2)
    mask = torch.zeros(len(targets), DESCRIBE_TOKENS, dtype=torch.bool)
    for i, prim in enumerate(targets):
        n = len(prim.params)
        desc[i, 0, 0] = KINDS.index(prim.kind)
        desc[i, 1:n + 1, 0] = torch.arange(1, n + 1, dtype=torch.float32)
        desc[i, 1:n + 1, 1] = prim.params.float()
        mask[i, :n + 1] = True
    return desc, mask


@dataclass
class SceneSet:
    features: torch.Tensor  # (N, Pmax, 4) xyz + target flag, zero where padded
    mask: torch.Tensor  # (N, Pmax) bool, True = real point
    surface: torch.Tensor  # (N, R, 3) samples on each scene's target surface
    targets: list[Primitive]  # each scene's target object (exact surface, for the metrics)

    def __len__(self) -> int:
        return len(self.targets)

    def describe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 4, 2) target descriptions and their (N, 4) mask (describe_targets)."""
        return describe_targets(self.targets)

    def conditions(self, num: int | None = None) -> dict[str, torch.Tensor]:
        """Generation conditions of the first ``num`` scenes: the scene and its target description (used by
        models trained with scene.describe_target, ignored by the others)."""
        num = len(self) if num is None else num
        desc, dmask = describe_targets(self.targets[:num])
        return {"features": self.features[:num], "mask": self.mask[:num], "describe": desc, "describe_mask": dmask}


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

    def __init__(self, scenes: SceneSet, num_target_points: int, describe: bool = False):
        self.scenes = scenes  # CPU copy: preview scenes
        self.k = num_target_points
        self.features, self.mask, self.surface = scenes.features, scenes.mask, scenes.surface
        self.num_examples = len(scenes)
        self.info = {"num_target_points": num_target_points, "context_channels": scenes.features.shape[-1],
                     "max_points": scenes.features.shape[1], "num_scenes": len(scenes)}
        self.describe = self.describe_mask = None
        if describe:  # the second context set: the target's description (scene.describe_target)
            self.describe, self.describe_mask = scenes.describe()
            self.info.update(describe_target=True, describe_tokens=DESCRIBE_TOKENS, describe_kinds=len(KINDS))

    def to(self, device: torch.device) -> "SceneTrainData":
        self.features, self.mask, self.surface = (t.to(device) for t in (self.scenes.features, self.scenes.mask,
                                                                          self.scenes.surface))
        if self.describe is not None:
            self.describe, self.describe_mask = self.describe.to(device), self.describe_mask.to(device)
        return self

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"features": self.features[idx], "mask": self.mask[idx],
               "target_points": draw_from_pool(self.surface[idx], self.k)}
        if self.describe is not None:
            out.update(describe=self.describe[idx], describe_mask=self.describe_mask[idx])
        return out


def load_scene_train_data(cfg, progress: bool = True) -> SceneTrainData:
    s = cfg.scene
    return SceneTrainData(make_scene_set(s, s.num_scenes, s.seed, s.target_pool), s.num_target_points,
                          describe=s.describe_target)


def load_eval_scenes(scene_cfg, num: int, pool: int) -> SceneSet:
    """Held-out scenes: drawn from scene.eval_seed, which must differ from the training seed."""
    if scene_cfg.eval_seed == scene_cfg.seed:
        raise ValueError(f"scene.eval_seed equals scene.seed ({scene_cfg.seed}): evaluation scenes would be "
                         "training scenes")
    return make_scene_set(scene_cfg, num, scene_cfg.eval_seed, pool)

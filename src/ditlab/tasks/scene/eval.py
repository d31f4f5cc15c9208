"""``ditlab scene eval RUN``: how well a scene model puts points on its target object's surface.

For held-out scenes (scene.eval_seed) the model generates K points per scene; the metrics use the
target's exact analytic surface (ditlab.tasks.scene.scenes):

- distance: mean distance of the generated points to the surface (lower is better, 0 is exact);
- precision: fraction of generated points within the coverage radius of the surface;
- coverage: fraction of the surface (reference samples) with a generated point within that radius,
  which catches a generator that collapses onto one spot of the surface.

The same metrics for baselines put the numbers in context:

- ground_truth: K fresh exact surface samples, the best any K-point generator can do (coverage is
  below 1 only because K points cannot cover a surface at that radius);
- scene_points: K random points of the whole scene cloud (knows the scene, not the target);
- target_box: K points uniform in the bounding box of the target's observed points (knows where
  the target is, not its surface);
- nearest_scene_point: the target_box points each moved to its nearest point of the scene cloud (a
  copy of observed points: on this synthetic data the observed points are exact surface samples, so
  copying them is nearly perfect where the box holds only the target; the model generates new points);
- unconditional: the model itself with the scene dropped (the learned null context): shows whether
  the model uses the scene at all. With scene.frame=target it still gets the target's centre and
  RMS size through the frame, so it is then a "frame only" baseline.
"""
from __future__ import annotations

import dataclasses

import time

import torch

from ditlab.generation import batch_bar, generate, precision_name
from ditlab.tasks.base import SampleSettings
from ditlab.tasks.scene.data import SceneSet, load_eval_scenes
from ditlab.tasks.scene.scenes import coverage, sample_surface, surface_distance


def point_metrics(points: torch.Tensor, scenes: SceneSet, radius: float) -> dict[str, float]:
    """Scene-averaged distance, precision and coverage of generated points (B, K, 3)."""
    dist = torch.stack([surface_distance(prim, p.float()) for p, prim in zip(points.cpu(), scenes.targets)])  # (B, K)
    cov = coverage(points.cpu(), scenes.targets, radius=radius)
    return {"distance": dist.mean().item(), "distance_median": dist.median().item(),
            "precision": (dist <= radius).float().mean().item(), "coverage": cov.mean().item()}


def baseline_points(scenes: SceneSet, k: int, seed: int) -> dict[str, torch.Tensor]:
    """Points (B, K, 3) of each baseline (see the module docstring), deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)
    truth, scene_pts, box, snapped = [], [], [], []
    for feats, mask, prim in zip(scenes.features, scenes.mask, scenes.targets):
        truth.append(sample_surface(prim, k, g)[0])
        cloud = feats[mask, :3]
        scene_pts.append(cloud[torch.randint(len(cloud), (k,), generator=g)])
        target = feats[mask & (feats[:, 3] > 0.5), :3]
        lo, hi = target.min(dim=0).values, target.max(dim=0).values
        box.append(lo + (hi - lo) * torch.rand(k, 3, generator=g))
        snapped.append(cloud[torch.cdist(box[-1], cloud).argmin(dim=1)])
    return {"ground_truth": torch.stack(truth), "scene_points": torch.stack(scene_pts), "target_box": torch.stack(box),
            "nearest_scene_point": torch.stack(snapped)}


def generate_for_scenes(task, model, scenes: SceneSet, seed: int, settings: SampleSettings, batch_size: int,
                        device, progress=None, autocast_dtype=None) -> torch.Tensor:
    """The model's K points for every scene, in batches; scene i uses noise (seed, i) whatever the batch.
    ``progress``: ditlab.generation.generate's wrapper of the batches (a bar), or None; ``autocast_dtype``: the
    network's precision (None: fp32)."""
    out = generate(task, model, len(scenes), seed, settings, scenes.conditions() if getattr(task, "describe", False)
                   else {"features": scenes.features, "mask": scenes.mask},
                   batch_size=batch_size, device=device, progress=progress, autocast_dtype=autocast_dtype)
    return out["points"]


def evaluate_run(run, num_scenes: int, settings: SampleSettings, seed: int = 0, batch_size: int = 128, device="cpu",
                 unconditional: bool = True, progress: bool = False,
                 autocast_dtype=None) -> tuple[dict, torch.Tensor, SceneSet]:
    """Metrics of the model and the baselines on ``num_scenes`` held-out scenes of a loaded run, sampled with
    ``settings`` (guidance scale, per-set compositional guidance, sampler); the unconditional baseline is the
    same sampler with every set dropped (guidance scale 0)."""
    s = run.cfg.scene
    k = int(run.info["num_target_points"])
    scenes = load_eval_scenes(s, num_scenes, pool=1)  # the pool is not used: metrics use the exact surface
    t0 = time.perf_counter()
    points = generate_for_scenes(run.task, run.model, scenes, seed, settings, batch_size, device,
                                 batch_bar(progress, "model"), autocast_dtype)
    seconds = time.perf_counter() - t0
    methods = {"model": points}
    if unconditional:
        methods["unconditional"] = generate_for_scenes(
            run.task, run.model, scenes, seed, dataclasses.replace(settings, cfg_scale=0.0, cfg_context=()),
            batch_size, device, batch_bar(progress, "unconditional"), autocast_dtype)
    methods.update(baseline_points(scenes, k, seed))
    report = {
        "run": str(run.checkpoint), "scenes": num_scenes, "eval_seed": s.eval_seed, "points_per_scene": k,
        "sampler": settings.sampler, "steps": settings.steps, "cfg_scale": settings.cfg_scale,
        **({"cfg_context": dict(settings.cfg_context)} if settings.cfg_context else {}), "seed": seed,
        "precision": precision_name(autocast_dtype), "coverage_radius": s.coverage_radius, "generation_seconds": seconds,
        "metrics": {name: point_metrics(p, scenes, s.coverage_radius) for name, p in methods.items()},
    }
    return report, points, scenes

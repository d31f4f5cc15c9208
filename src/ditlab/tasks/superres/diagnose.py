"""`ditlab diagnose collapse`: does a conditional model still use its noise?

For M conditions x K seeds and each (CFG scale, condition noise level, condition strength
--cond-scale) setting, the samples' spread is split into across-seed and across-condition parts (:mod:`ditlab.eval.collapse`) in pixel
space (and in Inception feature space when a network is given). For super-resolution the across-seed
spread is also compared with the ground truth's residual energy E||x - up(down(x))||^2, the detail a
sampler of p(x | low-res) has to invent: ``seed_to_residual`` near 0 means every seed invents the
same detail (collapse), near 1 means the seeds vary as much as real detail does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ditlab.eval.collapse import spread_stats
from ditlab.imageio import save_image_grid
from ditlab.generation import generate, precision_name
from ditlab.tasks.base import SampleSettings


def residual_energy(originals: torch.Tensor, factor: int) -> float:
    """Mean squared high-frequency detail per image, in [0, 1] pixel units: ||x - up(down(x))||^2."""
    x = originals.float() / 255
    up = F.interpolate(F.avg_pool2d(x, factor), scale_factor=factor, mode="nearest")
    return (x - up).square().flatten(1).sum(1).mean().item()


def collapse_sweep(run, originals: torch.Tensor, seeds: int, cfg_scales, cond_noises, out_dir: Path,
                   sampler: str = "heun", steps: int = 25, seed: int = 0, device="cpu", autocast_dtype=None,
                   features: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                   threshold: float = 0.1, cond_scales=(1.0,)) -> dict:
    """Sample every setting, write one grid per setting (rows = conditions, columns = seeds), return the report."""
    M, K = len(originals), seeds
    task = run.task
    factor = run.cfg.task.factor
    residual = residual_energy(originals, factor)
    repeated = originals.repeat_interleave(K, dim=0)  # sample m * K + k: condition m, seed k
    rows = []
    for s in cond_noises:
        task.cfg.cond_noise_sample = float(s)
        for cs in cond_scales:
            for w in cfg_scales:
                settings = SampleSettings(sampler=sampler, steps=steps, cfg_scale=float(w), cond_scale=float(cs))
                images = generate(task, run.model, M * K, seed, settings, {"images": repeated}, batch_size=M * K,
                                  device=device, autocast_dtype=autocast_dtype)["images"]
                pixel = spread_stats(images.float().div(255).view(M, K, -1))
                row = {"cfg": float(w), "cond_noise": float(s), "cond_scale": float(cs), "pixel": pixel.as_dict(),
                       "seed_to_residual": pixel.within / residual if residual > 0 else float("nan")}
                if features is not None:
                    row["inception"] = spread_stats(features(images).view(M, K, -1)).as_dict()
                suffix = "" if float(cs) == 1.0 else f"_cs{cs}"  # cond-scale 1: the names of before
                grid = save_image_grid(images, out_dir / f"collapse_cfg{w}_noise{s}{suffix}.png", nrow=K)
                row["grid"] = grid.name
                rows.append(row)
    plain = next((r for r in rows if r["cfg"] == 1.0 and r["cond_noise"] == 0.0 and r["cond_scale"] == 1.0),
                 rows[0])
    report = {"conditions": M, "seeds": K, "sampler": sampler, "steps": steps,
              "precision": precision_name(autocast_dtype), "residual_energy": residual,
              "threshold": threshold, "settings": rows,
              "verdict": {"collapsed": plain["seed_to_residual"] < threshold, "at": {"cfg": plain["cfg"],
                          "cond_noise": plain["cond_noise"], "cond_scale": plain["cond_scale"]},
                          "seed_to_residual": plain["seed_to_residual"]}}
    (out_dir / "collapse.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_sweep(rows, out_dir / "collapse.png", threshold)
    return report


def plot_sweep(rows: list[dict], path: Path, threshold: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for s, cs in sorted({(r["cond_noise"], r.get("cond_scale", 1.0)) for r in rows}):
        pts = sorted((r["cfg"], r["seed_to_residual"]) for r in rows
                     if r["cond_noise"] == s and r.get("cond_scale", 1.0) == cs)
        ax.plot(*zip(*pts), marker="o", label=f"condition noise {s}" + (f", cond-scale {cs}" if cs != 1.0 else ""))
    ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label="collapse threshold")
    ax.set_xlabel("CFG scale")
    ax.set_ylabel("across-seed spread / residual energy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

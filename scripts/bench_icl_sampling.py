"""ICL sampling with and without the cached clean context (DiT.prefix_cache), same model and noise.

    PYTHONPATH=src python scripts/bench_icl_sampling.py [--d 20 --points 41 --prompts 16 --samples 8 --steps 10]

A randomly initialised model of configs/icl.yaml's size; prints seconds for both paths, the speed-up
and the largest difference between their samples (JSON).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from ditlab.config import DiffusionConfig, ModelConfig
from ditlab.diffusion.objectives import build_objective
from ditlab.tasks.icl.task import ICLDiffusionTask, build_icl_model, sample_queries


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--d", type=int, default=20)
    p.add_argument("--points", type=int, default=41)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.manual_seed(0)
    model = build_icl_model(ModelConfig(hidden_size=256, depth=8, num_heads=8), a.d, a.points).to(a.device).eval()
    objective = build_objective(DiffusionConfig(process="ddpm", schedule="cosine", prediction="v"))
    objective.schedule.to(a.device)
    task = ICLDiffusionTask(model, objective)
    x, y = torch.randn(a.prompts, a.points, a.d, device=a.device), torch.randn(a.prompts, a.points, device=a.device)
    cached = task.denoiser()
    result, draws = {}, {}
    with torch.no_grad():
        for name, fn in (("cached_s", cached), ("full_s", lambda xs, t: cached(xs, t))):  # the lambda hides the cache
            t0 = time.perf_counter()
            draws[name] = sample_queries(fn, x, y, a.samples, objective.schedule, torch.Generator().manual_seed(0),
                                         method="ddim", steps=a.steps)
            if a.device != "cpu":
                torch.cuda.synchronize()
            result[name] = round(time.perf_counter() - t0, 2)
    result["speedup"] = round(result["full_s"] / result["cached_s"], 2)
    result["max_abs_diff"] = float((draws["cached_s"] - draws["full_s"]).abs().max())
    print(json.dumps({**vars(a), **result}))


if __name__ == "__main__":
    main()

"""ICL sampling through the one generation loop, with and without the cached clean context.

    PYTHONPATH=src python scripts/bench_icl_sampling.py [--d 20 --points 41 --prompts 16 --samples 8 --steps 10]
        [--sampler ddim|ddpm] [--eta E] [--repeats R] [--device cpu]

A randomly initialised model of configs/icl.yaml's size and an ICLDiffusionTask, sampled with
``ditlab.generation.generate`` (what ``ditlab sample`` and ``ditlab icl eval`` run): PROMPTS x SAMPLES
rows in one batch, row r = sample r of prompt r // SAMPLES, its noise from its own generator
(``PerSampleRNG``, seed 0). Two variants on the same noise:

- ``cached_s``: the task's denoiser as shipped: the clean context (x and clean-y tokens) runs through
  the network once per batch (``DiT.prefix_cache``), every step runs the N query tokens only;
- ``full_s``: ``ICLDenoiser.with_prefix`` monkeypatched to return the plain denoiser, so every step runs
  the full 3N-token forward (as tests/tasks/icl/test_task.py does);
- ``one_generator_s``: the cached path with the noise of one generator for the whole batch, as before
  issue 15 (``ditlab.generation.PerSampleRNG`` monkeypatched): what the per-sample generators cost
  end to end (its samples differ from the others': other noise).

It also times the noise alone: the draws the sampler makes (the start noise, plus one draw per step for
ddpm or ddim with eta > 0) from per-sample generators (``rng_per_sample_s``) and, for comparison, from
one generator for the whole batch as before issue 15 (``rng_one_generator_s``).
With ``--repeats R`` the two variants alternate R times and each reports its fastest run (a shared
machine's other jobs only ever add time). Prints one JSON line: the settings, the seconds, the
speed-up and the largest difference between the two variants' samples.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from ditlab.config import DiffusionConfig, ModelConfig
from ditlab.diffusion.noise import PerSampleRNG
from ditlab.diffusion.objectives import build_objective
from ditlab import generation
from ditlab.generation import generate
from ditlab.tasks.base import SampleSettings
from ditlab.tasks.icl import task as icl_task
from ditlab.tasks.icl.model import build_icl_model


class OneGenerator:
    """The noise source before issue 15: one seeded generator draws the whole batch (B, *shape)."""

    def __init__(self, seed: int, indices, device):
        self.batch, self.device = len(list(indices)), torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.batch

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(self.batch, *shape, generator=self.generator).to(self.device)


def timed(fn, device: str):
    t0 = time.perf_counter()
    out = fn()
    if device != "cpu":
        torch.cuda.synchronize()
    return out, round(time.perf_counter() - t0, 4)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--d", type=int, default=20)
    p.add_argument("--points", type=int, default=41)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=8, help="samples per prompt")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("--repeats", type=int, default=1, help="alternate the variants R times, keep each one's fastest")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.manual_seed(0)
    model = build_icl_model(ModelConfig(hidden_size=256, depth=8, num_heads=8), a.d, a.points).to(a.device).eval()
    objective = build_objective(DiffusionConfig(process="ddpm", schedule="cosine", prediction="v"))
    objective.schedule.to(a.device)
    task = icl_task.ICLDiffusionTask(model, objective)
    settings = SampleSettings(sampler=a.sampler, steps=a.steps, eta=a.eta)
    x, y = torch.randn(a.prompts, a.points, a.d), torch.randn(a.prompts, a.points)
    num = a.prompts * a.samples
    cond = {"x": x.repeat_interleave(a.samples, 0), "y": y.repeat_interleave(a.samples, 0)}

    def run():
        return generate(task, model, num, 0, settings, cond, batch_size=num, device=a.device)["y_sampled"]

    generate(task, model, 2, 0, SampleSettings(sampler=a.sampler, steps=1), {k: v[:2] for k, v in cond.items()},
             device=a.device)  # warm-up (allocator, first-call overheads), not timed
    with_prefix = icl_task.ICLDenoiser.with_prefix

    def run_full():
        icl_task.ICLDenoiser.with_prefix = lambda self, xs, ys: self  # no prefix cache: every step runs all 3N tokens
        try:
            return run()
        finally:
            icl_task.ICLDenoiser.with_prefix = with_prefix

    def run_one_generator():
        per_sample = generation.PerSampleRNG
        generation.PerSampleRNG = OneGenerator
        try:
            return run()
        finally:
            generation.PerSampleRNG = per_sample

    draws, times = {}, {"cached_s": [], "full_s": [], "one_generator_s": []}
    for _ in range(max(1, a.repeats)):
        for name, fn in (("cached_s", run), ("full_s", run_full), ("one_generator_s", run_one_generator)):
            draws[name], seconds = timed(fn, a.device)
            times[name].append(seconds)
    result = {name: min(t) for name, t in times.items()}
    if a.repeats > 1:
        result["all_s"] = times
    result["speedup"] = round(result["full_s"] / result["cached_s"], 2)
    result["max_abs_diff"] = float((draws["cached_s"] - draws["full_s"]).abs().max())
    result["one_generator_noise_differs"] = bool((draws["one_generator_s"] != draws["cached_s"]).any())

    # The noise alone: the start draw, plus one per step where the sampler is stochastic.
    draws_per_sample = 1 + (a.steps if a.sampler == "ddpm" or a.eta > 0 else 0)

    def per_sample():
        rng = PerSampleRNG(0, range(num), a.device)
        return [rng.randn(a.points, 1) for _ in range(draws_per_sample)]

    def one_generator():
        g = torch.Generator().manual_seed(0)
        return [torch.randn(num, a.points, 1, generator=g).to(a.device) for _ in range(draws_per_sample)]

    result["rng_per_sample_s"] = min(timed(per_sample, a.device)[1] for _ in range(3))
    result["rng_one_generator_s"] = min(timed(one_generator, a.device)[1] for _ in range(3))
    result["rng_draws"] = draws_per_sample
    print(json.dumps({**vars(a), "rows": num, "threads": torch.get_num_threads(), **result}))


if __name__ == "__main__":
    main()

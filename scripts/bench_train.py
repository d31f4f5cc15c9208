"""Training throughput of the full ditlab step (forward, loss, backward, clip, AdamW, EMA).

    python scripts/bench_train.py --arch DiT-S/2 DiT-B/2 --batch 256 --compile both

Prints one JSON line per setting: images/s (median of repeats after warm-up), MFU against the
measured bf16 matmul ceiling of the H100 (798 TFLOP/s, ../shared/GPU.md), peak memory.
Data: random uint8 images held on the GPU, as the trainer holds real ones.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ditlab.config import load_config
from ditlab.flops import train_flops_per_image
from ditlab.train.trainer import Trainer

PEAK_TFLOPS = 798.0


def bench(arch: str, batch: int, compile_: bool, data: str, steps: int, repeats: int, warmup: int, extra) -> dict:
    run_dir = tempfile.mkdtemp(prefix="ditlab-bench-")
    cfg = load_config(None, [f"model.arch={arch}", "model.num_classes=10", f"data.path={data}",
                             f"train.batch_size={batch}", f"train.compile={str(compile_).lower()}",
                             "train.precision=bf16", f"train.run_dir={run_dir}", "diffusion.process=ddpm",
                             "diffusion.prediction=eps", *extra])
    trainer = Trainer(cfg, progress=False)
    for _ in range(warmup):
        trainer.train_step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    rates = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        torch.cuda.synchronize()
        rates.append(steps * batch / (time.perf_counter() - t0))
    ips = statistics.median(rates)
    flops = train_flops_per_image(trainer.model)
    return {"arch": arch, "batch": batch, "compile": compile_, "images_per_s": round(ips, 1),
            "mfu": round(ips * flops / (PEAK_TFLOPS * 1e12), 4), "train_gflops_per_image": round(flops / 1e9, 2),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "repeats": [round(r) for r in rates],
            "device": torch.cuda.get_device_name(), "torch": torch.__version__}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", nargs="+", default=["DiT-S/2", "DiT-B/2"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--compile", choices=["yes", "no", "both"], default="both")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    data = Path(tempfile.mkdtemp()) / "random.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (4096, args.image_size, args.image_size, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 4096), class_names=np.array([str(i) for i in range(10)]))
    modes = {"yes": [True], "no": [False], "both": [False, True]}[args.compile]
    for arch in args.arch:
        for c in modes:
            print(json.dumps(bench(arch, args.batch, c, str(data), args.steps, args.repeats, args.warmup,
                                   args.overrides)), flush=True)


if __name__ == "__main__":
    main()

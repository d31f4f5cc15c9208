"""Where the time of a training step goes: GPU kernel time by category, and host time per step.

    python scripts/profile_train.py --arch DiT-S/2 train.compile=true train.nan_check=log
    python scripts/profile_train.py --arch DiT-S/2 --kernels K.jsonl train.compile=true train.nan_check=log \
        train.fast_kernels=on     # the fused adaLN kernels (their own category, "adaln (ditlab)")
    python scripts/profile_train.py --arch DiT-S/2 --context-tokens 77 train.compile=true train.nan_check=log
        # with a random 77-token context set, as bench_train.py's row of the same name

Prints a JSON summary (GPU busy ms per step by kernel category, wall ms per step without and under the
profiler, top kernels).
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from ditlab.bench import write_random_context, write_random_npz
from ditlab.config import load_config
from ditlab.train.trainer import Trainer

CATEGORIES = [
    ("adaln (ditlab)", r"_adaln_"),  # ditlab.models.kernels (train.fast_kernels=on)
    ("attention", r"flash|fmha|attention|sdpa|cudnn.*(mha|attn)"),
    ("gemm", r"gemm|cutlass|sm90_xmma|matmul|cublas|nvjet"),
    ("optimizer", r"adam"),
    ("triton", r"triton"),
    ("reduce/norm", r"norm|reduce"),
    ("elementwise", r"elementwise|vectorized|unrolled|copy|fill"),
]


def categorize(name: str) -> str:
    low = name.lower()
    for cat, pattern in CATEGORIES:
        if re.search(pattern, low):
            return cat
    return "other"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="DiT-S/2")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--kernels", default=None, help="also write every GPU kernel (ms per step, calls per step) "
                   "as JSON lines to this file")
    p.add_argument("--context-tokens", type=int, default=0, help="add a random context set of this many tokens")
    p.add_argument("--context-dim", type=int, default=768)
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args()  # overrides may come before and after the flags
    num = 4096
    data = write_random_npz(num=num)
    extra = [f"data.context_path={write_random_context(num, args.context_tokens, args.context_dim)}"] \
        if args.context_tokens else []
    cfg = load_config(None, [f"model.arch={args.arch}", "model.num_classes=10", f"data.path={data}",
                             f"train.batch_size={args.batch}", f"train.run_dir={tempfile.mkdtemp()}",
                             *extra, *args.overrides])
    trainer = Trainer(cfg, progress=False)
    for _ in range(args.warmup):
        trainer.train_step()

    def timed_steps() -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps

    # The step's wall time without the profiler as well: under it, a RoPE step took 72 ms of wall time on an
    # H100 against the 48 ms of its training run (sin-cos: 43.8 against 43.2), for reasons not looked into.
    wall = timed_steps()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        wall_profiled = timed_steps()
    by_cat, by_kernel, every = defaultdict(float), defaultdict(float), []
    for evt in prof.key_averages():
        if evt.device_type == torch.autograd.DeviceType.CUDA and evt.self_device_time_total > 0:
            ms = evt.self_device_time_total / 1000 / args.steps
            by_cat[categorize(evt.key)] += ms
            by_kernel[evt.key[:90]] += ms
            every.append({"kernel": evt.key, "category": categorize(evt.key), "ms_per_step": round(ms, 4),
                          "calls_per_step": evt.count / args.steps})
    if args.kernels:
        with open(args.kernels, "w") as f:
            for row in sorted(every, key=lambda r: -r["ms_per_step"]):
                f.write(json.dumps(row) + "\n")
    top = sorted(by_kernel.items(), key=lambda kv: -kv[1])[:25]
    print(json.dumps({"arch": args.arch, "overrides": args.overrides, "wall_ms_per_step": round(wall * 1e3, 2),
                      "wall_ms_per_step_profiled": round(wall_profiled * 1e3, 2),
                      "gpu_ms_per_step": round(sum(by_cat.values()), 2),
                      "by_category_ms": {k: round(v, 2) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
                      "top_kernels_ms": [(k, round(v, 3)) for k, v in top]}, indent=1))


if __name__ == "__main__":
    main()

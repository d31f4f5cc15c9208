"""Training throughput on synthetic data (random uint8 images held on the GPU, as real ones are).

    python scripts/bench_train.py --arch DiT-S/2 DiT-B/2 --compile both [section.key=value ...]
    torchrun --nproc_per_node=2 scripts/bench_train.py --arch DiT-B/2 --batch 512 --compile yes   # DDP

One JSON line per setting (see ditlab.bench.bench_train). The same measurement on a real data set:
`ditlab bench train CONFIG`.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

from ditlab.bench import bench_train, write_random_npz
from ditlab.config import load_config


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
    args = p.parse_intermixed_args()  # overrides may come before and after the flags
    data = write_random_npz(image_size=args.image_size)
    for arch in args.arch:
        for c in {"yes": [True], "no": [False], "both": [False, True]}[args.compile]:
            cfg = load_config(None, [f"model.arch={arch}", "model.num_classes=10", f"data.path={data}",
                                     f"train.batch_size={args.batch}", f"train.compile={str(c).lower()}",
                                     "train.precision=bf16", f"train.run_dir={tempfile.mkdtemp()}",
                                     "diffusion.process=ddpm", "diffusion.prediction=eps", *args.overrides])
            result = bench_train(cfg, args.warmup, args.steps, args.repeats)
            if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: one line, from rank 0
                print(json.dumps(result), flush=True)
    from ditlab.train.distributed import SINGLE, init_distributed, shutdown

    shutdown(init_distributed() if os.environ.get("WORLD_SIZE", "1") != "1" else SINGLE)  # leave the group cleanly


if __name__ == "__main__":
    main()

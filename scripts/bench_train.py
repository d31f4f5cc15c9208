"""Training throughput on synthetic data (random uint8 images held on the GPU, as real ones are).

    python scripts/bench_train.py --arch DiT-S/2 DiT-B/2 --compile both [section.key=value ...]
    torchrun --nproc_per_node=2 scripts/bench_train.py --arch DiT-B/2 --batch 512 --compile yes   # DDP
    # issue 17: fused adaLN kernels off against on, a super-resolution row and a 77-token context-set row
    python scripts/bench_train.py --arch DiT-S/2 --compile yes --fast-kernels off,on train.nan_check=log
    python scripts/bench_train.py --arch DiT-S/2 --compile yes task.kind=superres train.nan_check=log
    python scripts/bench_train.py --arch DiT-S/2 --compile yes --context-tokens 77 train.nan_check=log
    # the fused blocks' MLP: cuBLAS GEMMs + GELU kernels against GELU in Triton GEMM epilogues (DITLAB_MLP_GEMM)
    python scripts/bench_train.py --arch DiT-S/2 --compile yes --fast-kernels on --mlp-gemm cublas,triton
    # attention backends of PyTorch SDPA, one row each (issue 17: cuDNN against flash)
    python scripts/bench_train.py --arch DiT-S/2 DiT-B/2 --compile yes --sdpa cudnn,flash,efficient
    # torchao float8 (train.float8; carry torchao's wheel to a GPU machine without it)
    python scripts/bench_train.py --arch DiT-S/2 DiT-B/2 --compile yes --float8 off,tensorwise,rowwise

One JSON line per setting (see ditlab.bench.bench_train), with the task, the fast_kernels and float8
modes, the optimizer, the SDPA backend, the fused MLP's GEMMs and the context-set length added. The same
measurement on a real data set:
`ditlab bench train CONFIG`.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import tempfile

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ditlab.bench import bench_train, write_random_context, write_random_npz
from ditlab.config import load_config
from ditlab.models import kernels, token_groups


SDPA_BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def parse_args(argv=None):
    """The command line: rows to measure (flags, each a comma list) and config overrides."""
    p = argparse.ArgumentParser()
    p.add_argument("--arch", nargs="+", default=["DiT-S/2", "DiT-B/2"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--compile", choices=["yes", "no", "both"], default="both")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--fast-kernels", default=None,
                   help="comma-separated train.fast_kernels values to measure, one row each, e.g. off,on "
                        "(default: the config's)")
    p.add_argument("--float8", default=None,
                   help="comma-separated train.float8 values to measure, one row each, e.g. off,tensorwise,rowwise "
                        "(default: the config's)")
    p.add_argument("--sdpa", default=None,
                   help="comma-separated SDPA backends, one row each, the only one the step may use: cudnn, flash, "
                        "efficient, math (default: PyTorch's choice). The whole row (compilation included) runs "
                        "under torch.nn.attention.sdpa_kernel, so the compiled step is traced with it")
    p.add_argument("--mlp-gemm", default=None,
                   help="comma-separated DITLAB_MLP_GEMM values, one row each: cublas, triton (the fused blocks' "
                        "MLP, so with --fast-kernels on; default: the environment's, else cublas)")
    p.add_argument("--context-tokens", type=int, default=0, help="add a random context set of this many tokens")
    p.add_argument("--context-dim", type=int, default=768)
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args(argv)  # overrides may come before and after the flags
    # ... but --arch takes every word up to the next flag: `--arch DiT-S/2 optim.name=muon` would read the
    # override as an architecture (the fifteenth session's first muon rows failed so). A word with '=' is an override.
    args.overrides = [a for a in args.arch if "=" in a] + args.overrides
    args.arch = [a for a in args.arch if "=" not in a] or p.get_default("arch")
    return p, args


def main():
    p, args = parse_args()
    num = 4096
    data = write_random_npz(num=num, image_size=args.image_size)
    extra = []
    if args.context_tokens:
        extra.append(f"data.context_path={write_random_context(num, args.context_tokens, args.context_dim)}")

    def values(flag, text, allowed):
        vals = text.split(",") if text else [None]
        for v in vals:
            if v is not None and v not in allowed:
                p.error(f"{flag}: {v!r} is not one of {', '.join(allowed)}")
        return vals

    fast = values("--fast-kernels", args.fast_kernels, ("auto", "on", "off"))
    fp8 = values("--float8", args.float8, ("off", "tensorwise", "rowwise"))
    sdpa = values("--sdpa", args.sdpa, tuple(SDPA_BACKENDS))
    mlp_gemm = values("--mlp-gemm", args.mlp_gemm, kernels.MLP_GEMM_MODES)
    compiles = {"yes": [True], "no": [False], "both": [False, True]}[args.compile]
    # scene and icl draw their own data: data.path is an error there (ditlab.tasks.registry.check_kind_options)
    kind = next((o.split("=", 1)[1] for o in reversed(args.overrides) if o.startswith("task.kind=")), "image")
    data_path = [f"data.path={data}"] if kind in ("image", "superres", "lift") else []
    for arch, c, fk, f8, attn, mg in itertools.product(args.arch, compiles, fast, fp8, sdpa, mlp_gemm):
        if mg is not None:
            kernels.MLP_GEMM = mg  # read at trace time; each row below compiles afresh
        mode_overrides = ([] if fk is None else [f"train.fast_kernels={fk}"]) + (
            [] if f8 is None else [f"train.float8={f8}"])
        cfg = load_config(None, [f"model.arch={arch}", "model.num_classes=10", *data_path,
                                 f"train.batch_size={args.batch}", f"train.compile={str(c).lower()}",
                                 "train.precision=bf16", f"train.run_dir={tempfile.mkdtemp()}",
                                 "diffusion.process=ddpm", "diffusion.prediction=eps", *extra,
                                 *mode_overrides, *args.overrides])
        # Each row compiles afresh: dynamo would otherwise reuse the first row's graph (and its attention
        # backend: sdpa_kernel is read at trace time, not guarded) and, past its recompile limit, run eagerly.
        torch._dynamo.reset()
        with sdpa_kernel([SDPA_BACKENDS[attn]]) if attn else contextlib.nullcontext():
            result = bench_train(cfg, args.warmup, args.steps, args.repeats)
        result.update(task=cfg.task.kind, fast_kernels=cfg.train.fast_kernels, optim=cfg.optim.name,
                      sdpa=attn or "auto",
                      adaln_op=os.environ.get("DITLAB_ADALN_OP", "custom_op"),  # the kernels' default
                      adaln_bwd_loop_stages=os.environ.get("DITLAB_ADALN_BWD_LOOP_STAGES", "0"),
                      mlp_gemm=kernels.MLP_GEMM, token_runs_max=token_groups.MAX_RUNS,
                      context_tokens=args.context_tokens, overrides=args.overrides)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: one line, from rank 0
            line = json.dumps(result)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    from ditlab.train.distributed import SINGLE, init_distributed, shutdown

    shutdown(init_distributed() if os.environ.get("WORLD_SIZE", "1") != "1" else SINGLE)  # leave the group cleanly


if __name__ == "__main__":
    main()

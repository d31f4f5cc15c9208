"""Throughput benchmarks behind `ditlab bench train` and `ditlab bench sample`.

Timing follows ../shared/GPU.md: warm-up first (compilation), then repeats of a timed region
bracketed by device synchronisation; the median is reported. MFU is measured against the H100's
measured bf16 matmul ceiling (798 TFLOP/s) by default.
"""
from __future__ import annotations

import statistics
import time

import torch

from ditlab.devices import device_name
from ditlab.flops import dit_forward_flops, train_flops_per_image

PEAK_TFLOPS = 798.0


def write_random_npz(num: int = 4096, image_size: int = 32, num_classes: int = 10) -> str:
    """A synthetic labelled data set of random uint8 images in a temporary .npz (for speed only)."""
    import tempfile
    from pathlib import Path

    import numpy as np

    path = Path(tempfile.mkdtemp(prefix="ditlab-synthetic-")) / "random.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (num, image_size, image_size, 3), dtype=np.uint8),
             labels=rng.integers(0, num_classes, num))
    return str(path)


def write_random_context(num: int, tokens: int, dim: int) -> str:
    """A context file (docs/context_sets.md) of random fp16 embeddings in a temporary .npz, every row ``tokens``
    long (for speed only: data.context_path of a synthetic benchmark)."""
    import tempfile
    from pathlib import Path

    import numpy as np

    path = Path(tempfile.mkdtemp(prefix="ditlab-synthetic-ctx-")) / "context.npz"
    rng = np.random.default_rng(1)
    np.savez(path, embeddings=rng.standard_normal((num, tokens, dim), dtype=np.float32).astype(np.float16),
             lengths=np.full(num, tokens))
    return str(path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_info(device: torch.device) -> dict:
    return {"device": device_name(device), "torch": torch.__version__}


def _timed(fn, repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def time_calls_ms(fn, iters: int, repeats: int, device: torch.device) -> list[float]:
    """Milliseconds per call of ``fn``, one value per repeat of ``iters`` calls: CUDA events around the calls on a
    GPU (the kernels' time, the host's only where it stalls them), the wall clock on the CPU."""
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end) / iters)
        else:
            t = time.perf_counter()
            for _ in range(iters):
                fn()
            out.append((time.perf_counter() - t) * 1e3 / iters)
    return out


def bench_train(cfg, warmup: int = 15, steps: int = 20, repeats: int = 5, peak_tflops: float = PEAK_TFLOPS) -> dict:
    """Images/s of the full training step (forward, loss, backward, clip, AdamW, EMA).

    Under torchrun: images/s of the whole world (train.batch_size is the global batch) and MFU per GPU.
    """
    from ditlab.train.trainer import Trainer

    trainer = Trainer(cfg, progress=False)
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        trainer.train_step()
    trainer.check_finite()
    # Two peaks: over the whole bench, and over the timed steps alone. They differ under CUDA graphs
    # (train.compile_mode=reduce-overhead): the graphs' memory pool is allocated while warming up and replays
    # allocate nothing, so the timed steps alone read ~0.6 GiB for DiT-S/2 (H200, 2026-12-05).
    warmup_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def run():
        for _ in range(steps):
            trainer.train_step()

    times = _timed(run, repeats, device)
    trainer.check_finite()
    rates = [steps * cfg.train.batch_size / t for t in times]
    ips = statistics.median(rates)
    flops = train_flops_per_image(trainer.model)
    world = trainer.dist.world_size
    return {
        "what": "train", "arch": cfg.model.arch, "batch": cfg.train.batch_size, "world_size": world,
        "image_size": trainer.model.streams[0].size, "precision": cfg.train.precision,
        "compile": cfg.train.compile, "compile_mode": cfg.train.compile_mode, "nan_check": cfg.train.nan_check,
        "float8": cfg.train.float8,
        "images_per_s": round(ips, 1), "train_gflops_per_image": round(flops / 1e9, 4),
        "mfu": round(ips * flops / (world * peak_tflops * 1e12), 4), "peak_tflops": peak_tflops,
        "peak_mem_gib": round(max(warmup_peak, torch.cuda.max_memory_allocated(device)) / 2**30, 2)
        if device.type == "cuda" else None,
        "steady_peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda" else None,
        "repeats_images_per_s": [round(r, 1) for r in rates], **_device_info(device),
    }


def bench_sample(run_dir, num: int = 1024, batch_size: int = 256, sampler: str = "heun", steps: int = 50,
                 cfg_scale: float = 1.0, repeats: int = 3, device: str = "auto",
                 peak_tflops: float = PEAK_TFLOPS, compile: bool = False, checkpoint: str | None = None,
                 which: str | None = None, fast_kernels: str | None = None, fp32: bool = False) -> dict:
    """Images/s of sampling from a run (noise, every network evaluation, uint8 conversion). ``fast_kernels``
    (auto | on | off): the fused adaLN kernels; None: as the run trained (ditlab.runs.load_run). ``fp32``: no
    bf16 autocast on a GPU, as `ditlab sample --fp32`."""
    from ditlab.diffusion.paths import single_stream_path
    from ditlab.diffusion.samplers import count_nfe
    from ditlab.runs import load_run
    from ditlab.generation import generate, precision_name, sampling_autocast
    from ditlab.devices import resolve_device
    from ditlab.tasks.base import SampleSettings

    dev = resolve_device(device)
    run = load_run(run_dir, which=which, checkpoint=checkpoint, device=dev)  # --checkpoint / --weights as in sample
    amp = sampling_autocast(dev, fp32)
    if run.cfg.task.kind != "image":
        raise ValueError(f"`ditlab bench sample` measures image runs; {run_dir} is task.kind={run.cfg.task.kind!r}")
    from ditlab.models.kernels import configure_fast_kernels, fast_kernels_on

    if fast_kernels is not None:
        configure_fast_kernels(run.model, fast_kernels, dev, name="--fast-kernels")
    settings = SampleSettings(sampler=sampler, steps=steps, cfg_scale=cfg_scale)
    kwargs = dict(batch_size=batch_size, device=dev, autocast_dtype=amp)
    model = torch.compile(run.model) if compile else run.model
    generate(run.task, model, min(batch_size, num), 0, settings, **kwargs)  # warm-up
    times = _timed(lambda: generate(run.task, model, num, 0, settings, **kwargs), repeats, dev)
    ips = statistics.median(num / t for t in times)
    nfe = count_nfe(single_stream_path("image", run.task.objective.schedule.time_grid(steps)), sampler)
    flops = dit_forward_flops(run.model) * nfe * (2 if cfg_scale not in (0.0, 1.0) else 1)
    return {
        "what": "sample", "run": str(run_dir), "checkpoint": str(run.checkpoint), "arch": run.cfg.model.arch, "sampler": sampler, "steps": steps,
        "nfe": nfe, "cfg_scale": cfg_scale, "num": num, "batch": batch_size, "compile": compile, "fast_kernels": fast_kernels_on(run.model),
        "precision": precision_name(amp), "images_per_s": round(ips, 1),
        "mfu": round(ips * flops / (peak_tflops * 1e12), 4),
        "seconds_per_10k": round(10_000 / ips, 1), **_device_info(dev),
    }

"""The `ditlab` command: train, sample, config show, report, bench, diagnose, fid."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ditlab.configlib import ConfigError
from ditlab.tasks.image.cli import add_context_parser
from ditlab.eval.cli import add_fid_parser
from ditlab.tasks.icl.cli import add_icl_parser
from ditlab.tasks.scene.cli import add_scene_parser
from ditlab.experiments.ablate_cli import add_ablate_parser
from ditlab.tasks.lift.cli import add_lift_parser


def resolve_config_path(name: str | None) -> str | None:
    """A YAML path, or a preset name looked up in ./configs (`cifar10` -> configs/cifar10.yaml)."""
    if name is None or Path(name).exists():
        return name
    for candidate in (Path("configs") / name, Path("configs") / f"{name}.yaml"):
        if candidate.exists():
            return str(candidate)
    raise FileNotFoundError(f"config {name!r} not found (looked for the file and for configs/{name}.yaml)")


def cmd_train(args) -> int:
    from ditlab.config import load_config
    from ditlab.train.trainer import Trainer

    from ditlab.train.distributed import shutdown

    cfg = load_config(resolve_config_path(args.config), args.overrides)
    trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress)
    try:
        code = trainer.run()
    finally:
        shutdown(trainer.dist)
    if code == 0 and trainer.dist.is_main:
        print(f"ditlab: finished at step {trainer.step}; run directory {trainer.run_dir}")
    return code


def cmd_sample(args) -> int:
    from ditlab.train.distributed import init_distributed, shutdown

    info = init_distributed(args.device)  # under torchrun each rank samples its share of the indices
    try:
        return _sample(args, info)
    finally:
        shutdown(info)


def _sample(args, info) -> int:
    import torch
    from tqdm import tqdm

    from ditlab.imageio import save_image_grid, save_npz_images
    from ditlab.runs import load_run
    from ditlab.generation import generate, sampling_autocast
    from ditlab.train.distributed import gather_objects, rank_device, rank_slice

    device = rank_device(info, args.device, setting="--device")
    run = load_run(args.run_dir, which=args.weights, checkpoint=args.checkpoint, device=device)
    if run.cfg.task.kind == "scene":
        raise ValueError(f"{args.run_dir} is a scene run (point sets, not images): use `ditlab scene eval RUN`")
    s = run.cfg.sample
    sampler = args.sampler or s.sampler
    steps = args.steps or s.steps
    cfg_scale = s.cfg_scale if args.cfg is None else args.cfg
    cfg_interval = tuple(args.cfg_interval) if args.cfg_interval else s.cfg_interval
    amp = sampling_autocast(device, args.fp32)
    # Compiling costs ~30 s once and made 10k samples 3.5x faster on an H100 (BENCHMARKS.md).
    compile_ = {"on": True, "off": False}.get(args.compile, device.type == "cuda" and args.num >= 1000)
    model = torch.compile(run.model) if compile_ else run.model
    from ditlab.tasks.lift.cli import choose_sample_path

    path_name = choose_sample_path(run, args.run_dir, args.path)  # "" unless task.kind=lift
    conditions = None
    if run.cfg.task.kind == "superres" or path_name == "lo-oracle":
        if not args.cond:
            raise ValueError("this run is a super-resolution model: pass --cond DATASET (high-resolution images "
                             "whose downsampled copies are the inputs)")
        from ditlab.data import evaluation_subset, load_image_data

        cond_data = load_image_data(args.cond, run.info["image_size"])
        if len(cond_data.images) < args.num:
            raise ValueError(f"--cond {args.cond} holds {len(cond_data.images)} images, fewer than --num {args.num}")
        # A subset spread over all classes (the same one `ditlab psnr` pairs the samples with).
        conditions = cond_data.images[evaluation_subset(len(cond_data.images), args.num)]
    per_sample = {}
    if args.context:
        from ditlab.tasks.image.cli import sample_inputs

        per_sample = sample_inputs(run, args.context, args.num)
    elif run.info.get("context_dim") is not None:
        raise ValueError("this run cross-attends to a context set: pass --context FILE (row i conditions sample i)")
    # Sample i depends only on (seed, i): a rank's share [start, stop) gives the same samples as one process.
    share = rank_slice(info, args.num)
    if conditions is not None:
        conditions = conditions[share]
    if "labels" in per_sample:
        per_sample["labels"] = per_sample["labels"][share]
    if "context" in per_sample:
        per_sample["context"] = tuple(t[share] for t in per_sample["context"])
    done = []
    try:
        images, labels = generate(
            run.task, model, share.stop - share.start, args.seed, batch_size=args.batch_size, start=share.start,
            progress=(lambda b: tqdm(b, unit="batch", desc="sampling")) if info.is_main else None,
            on_batch=lambda imgs, idx: done.append(len(idx)),
            sampler=sampler, steps=steps, cfg_scale=cfg_scale, eta=args.eta, device=device, autocast_dtype=amp,
            conditions=conditions, cfg_interval=cfg_interval, **per_sample)
    except KeyboardInterrupt:
        print(f"\nditlab: interrupted after {sum(done)} of {args.num} samples; nothing was written", file=sys.stderr)
        return 130
    try:
        if info.enabled:  # rank order = sample order
            parts = gather_objects(info, (images, labels))
            if not info.is_main:
                return 0
            images = torch.cat([p[0] for p in parts])
            labels = torch.cat([p[1] for p in parts]) if parts[0][1] is not None else None
        nhwc = images.permute(0, 2, 3, 1).contiguous().numpy()
        out = save_npz_images(args.out, nhwc, labels.numpy() if labels is not None else None)  # atomic
    except KeyboardInterrupt:
        print(f"\nditlab: interrupted after all {sum(done)} samples of this process were generated, before "
              f"{args.out} was written; nothing was written", file=sys.stderr)
        return 130
    print(f"ditlab: wrote {len(nhwc)} samples ({sampler}, {steps} steps{f', path {path_name}' if path_name else ''}, "
          f"cfg {cfg_scale}"
          f"{f' in {cfg_interval}' if cfg_interval else ''}, seed {args.seed}, "
          f"{run.checkpoint.name}) to {out}")
    if args.grid:
        grid = save_image_grid(images[: args.grid_num], args.grid)
        print(f"ditlab: wrote grid {grid}")
    return 0


def cmd_config_show(args) -> int:
    from ditlab.config import load_config
    from ditlab.configlib import format_config

    print(format_config(load_config(resolve_config_path(args.config), args.overrides)), end="")
    return 0


def cmd_report(args) -> int:
    from ditlab.report import write_report

    path = write_report(args.run_dir, grid=args.grid)
    print(f"ditlab: wrote {path}")
    return 0


def cmd_bench_train(args) -> int:
    import json
    import os
    import tempfile

    from ditlab.bench import bench_train
    from ditlab.config import load_config

    # A scratch run directory unless the overrides name one: a benchmark leaves no run behind.
    overrides = [f"train.run_dir={tempfile.mkdtemp(prefix='ditlab-bench-')}"] + list(args.overrides)
    cfg = load_config(resolve_config_path(args.config), overrides)
    result = bench_train(cfg, args.warmup, args.steps, args.repeats)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: one line, from rank 0
        print(json.dumps(result))
    return 0


def cmd_bench_sample(args) -> int:
    import json

    from ditlab.bench import bench_sample

    print(json.dumps(bench_sample(args.run_dir, args.num, args.batch_size, args.sampler, args.steps, args.cfg,
                                  args.repeats, args.device, compile=args.compile == "on")))
    return 0


def cmd_psnr(args) -> int:
    import json

    import numpy as np
    import torch

    from ditlab.data import evaluation_subset, load_image_data
    from ditlab.eval.psnr import sr_psnr_report

    with np.load(args.samples) as z:
        key = "images" if "images" in z.files else "arr_0"
        samples = torch.from_numpy(z[key]).permute(0, 3, 1, 2)
    ref = load_image_data(args.ref, samples.shape[-1], progress=False)
    if len(ref.images) < len(samples):
        raise ValueError(f"--ref {args.ref} holds {len(ref.images)} images, fewer than the {len(samples)} samples "
                         f"in {args.samples}")
    # The originals that `ditlab sample --cond` took for these samples, in the same order.
    originals = ref.images[evaluation_subset(len(ref.images), len(samples))]
    report = sr_psnr_report(samples, originals, args.factor)
    report.update(samples=args.samples, ref=args.ref)
    print(json.dumps(report))
    return 0


def cmd_diagnose_collapse(args) -> int:
    import json

    import torch

    from ditlab.data import evaluation_subset, load_image_data
    from ditlab.devices import resolve_device
    from ditlab.tasks.superres.diagnose import collapse_sweep
    from ditlab.runs import load_run
    from ditlab.generation import sampling_autocast

    device = resolve_device(args.device)
    run = load_run(args.run_dir, device=device, kind="superres", command="`ditlab diagnose collapse`")
    cond_images = load_image_data(args.cond, run.info["image_size"]).images
    if len(cond_images) < args.conditions:
        raise ValueError(f"--cond {args.cond} holds {len(cond_images)} images, fewer than --conditions "
                         f"{args.conditions}")
    originals = cond_images[evaluation_subset(len(cond_images), args.conditions)]
    features = None
    if args.inception:
        from ditlab.eval import extract_features, load_inception

        net = load_inception(args.inception, device)
        features = lambda imgs: torch.from_numpy(extract_features(imgs, net, device, progress=False))  # noqa: E731
    out = Path(args.out or Path(args.run_dir) / "diagnose")
    out.mkdir(parents=True, exist_ok=True)
    amp = sampling_autocast(device)
    report = collapse_sweep(run, originals, args.seeds, args.cfg, args.cond_noise, out, sampler=args.sampler,
                            steps=args.steps, device=device, autocast_dtype=amp, features=features,
                            threshold=args.threshold)
    print(json.dumps(report["verdict"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ditlab", description="Diffusion transformers with per-token noise levels.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML preset and key=value overrides")
    t.add_argument("config", help="YAML preset (path, or a name in ./configs)")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=2e-4")
    t.add_argument("--resume", action="store_true", help="continue the run in train.run_dir from its latest checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bars (logs still go to metrics.jsonl)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a run's EMA weights")
    s.add_argument("run_dir")
    s.add_argument("-n", "--num", type=int, default=64,
                   help="number of samples (under torchrun write -n: torchrun's own parser reads --num as its "
                        "--numa-binding)")
    s.add_argument("--sampler", choices=["ddpm", "ddim", "euler", "heun"], default=None,
                   help="default: the run's sample.sampler")
    s.add_argument("--steps", type=int, default=None, help="default: the run's sample.steps")
    s.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = none)")
    s.add_argument("--cfg-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="guide only where the noise-to-signal ratio sigma/alpha is in (LO, HI], e.g. 0.28 5.42 "
                        "(default: the run's sample.cfg_interval, else every step)")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 deterministic, 1 = DDPM posterior)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.npz", help="output .npz (uint8 images N x H x W x 3, labels)")
    s.add_argument("--grid", default=None, help="also write a PNG grid of the first --grid-num samples")
    s.add_argument("--grid-num", type=int, default=64)
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: the latest)")
    s.add_argument("--weights", choices=["ema", "model"], default="ema")
    s.add_argument("--path", default=None,
                   help="task.kind=lift runs: the path through the (t_hi, t_lo) grid: diagonal, lo-first, hi-first, "
                        "shift:D, lo-fixed, lo-random, dp-hi, dp-total (dp-*: after `ditlab lift errors RUN`; "
                        "default: the run's lift.sample_path)")
    s.add_argument("--cond", default=None,
                   help="super-resolution runs: high-resolution images (any data set) whose downsampled copies "
                        "condition the samples; with --num below the set's size, a seeded subset spread over "
                        "the whole set (all classes), the one `ditlab psnr` pairs the samples with")
    s.add_argument("--context", default=None,
                   help="runs trained with data.context_path: a context file whose rows 0..N-1 condition samples "
                        "0..N-1 (and give their labels, if it has 'labels'); --cfg drops context and label together")
    s.add_argument("--device", default="auto")
    s.add_argument("--fp32", action="store_true", help="no bf16 autocast on the GPU")
    s.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the network first; auto = on a GPU for 1,000 samples or more")
    s.set_defaults(func=cmd_sample)

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print the resolved configuration")
    show.add_argument("config", nargs="?", default=None)
    show.add_argument("overrides", nargs="*")
    show.set_defaults(func=cmd_config_show)

    b = sub.add_parser("bench", help="throughput benchmarks (JSON on stdout)")
    bsub = b.add_subparsers(dest="bench_command", required=True)
    bt = bsub.add_parser("train", help="images/s, MFU and peak memory of the full training step")
    bt.add_argument("config")
    bt.add_argument("overrides", nargs="*")
    bt.add_argument("--warmup", type=int, default=15, help="untimed steps first (compilation)")
    bt.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    bt.add_argument("--repeats", type=int, default=5)
    bt.set_defaults(func=cmd_bench_train)
    bs = bsub.add_parser("sample", help="images/s of sampling from a run")
    bs.add_argument("run_dir")
    bs.add_argument("--num", type=int, default=1024)
    bs.add_argument("--batch-size", type=int, default=256)
    bs.add_argument("--sampler", choices=["ddpm", "ddim", "euler", "heun"], default="heun")
    bs.add_argument("--steps", type=int, default=50)
    bs.add_argument("--cfg", type=float, default=1.0)
    bs.add_argument("--repeats", type=int, default=3)
    bs.add_argument("--device", default="auto")
    bs.add_argument("--compile", choices=["on", "off"], default="off", help="torch.compile the network first")
    bs.set_defaults(func=cmd_bench_sample)

    r = sub.add_parser("report", help="write report.md and a loss plot for a run")
    r.add_argument("run_dir")
    r.add_argument("--grid", default=None, help="a sample grid PNG to include")
    r.set_defaults(func=cmd_report)

    ps = sub.add_parser("psnr", help="PSNR of super-resolution samples against their originals (JSON)")
    ps.add_argument("samples", help="samples .npz from `ditlab sample RUN --cond DATASET` (sample i <-> the i-th image of the "
                    "seeded subset that command took: ditlab.data.evaluation_subset)")
    ps.add_argument("--ref", required=True, help="the --cond data set the samples were conditioned on")
    ps.add_argument("--factor", type=int, default=2, help="downsampling factor of the run (bilinear baseline)")
    ps.set_defaults(func=cmd_psnr)

    d = sub.add_parser("diagnose", help="diagnostics of trained runs")
    dsub = d.add_subparsers(dest="diagnose_command", required=True)
    dc = dsub.add_parser("collapse", help="across-seed vs across-condition spread (posterior collapse)")
    dc.add_argument("run_dir")
    dc.add_argument("--cond", required=True, help="high-resolution images whose downsampled copies are the conditions")
    dc.add_argument("--conditions", type=int, default=8, help="M conditions (grid rows)")
    dc.add_argument("--seeds", type=int, default=8, help="K seeds per condition (grid columns)")
    dc.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    dc.add_argument("--cond-noise", type=float, nargs="+", default=[0.0])
    dc.add_argument("--sampler", choices=["ddpm", "ddim", "euler", "heun"], default="heun")
    dc.add_argument("--steps", type=int, default=25)
    dc.add_argument("--threshold", type=float, default=0.1,
                    help="collapsed when the across-seed spread is below this fraction of the residual energy")
    dc.add_argument("--inception", default=None, help="also measure in Inception feature space")
    dc.add_argument("--device", default="auto")
    dc.add_argument("--out", default=None, help="output folder (default RUN/diagnose)")
    dc.set_defaults(func=cmd_diagnose_collapse)

    add_fid_parser(sub)
    add_icl_parser(sub)
    add_context_parser(sub)
    add_scene_parser(sub)
    add_lift_parser(sub)
    add_ablate_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a positional list at the first flag, so `train CONFIG --resume a=b` leaves
    # `a=b` over: accept key=value overrides on either side of the flags; anything else is an error.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # `config show key=value` without a file: argparse puts the first override in `config`.
    if getattr(args, "config_command", None) == "show" and args.config and "=" in args.config and not Path(args.config).exists():
        args.overrides, args.config = [args.config] + args.overrides, None
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"ditlab: error: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        # ditlab.train.checkpoint.CheckpointError (no valid checkpoint, a failed save), matched by name so
        # that `ditlab --help` does not import torch.
        if not any(c.__name__ == "CheckpointError" for c in type(err).__mro__):
            raise
        print(f"ditlab: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

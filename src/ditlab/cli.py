"""The `ditlab` command: the generic subcommands (train, sample, config show, report, bench, fid, ablate);
each task kind adds its own from its package (ditlab.tasks.commands)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ditlab.cliargs import (SAMPLER_CHOICES, DeprecatedAlias, Parser, UsageError, add_cfg_context, add_checkpoint,
                            add_compile, add_data, add_device, add_fp32, add_no_progress, add_set, finite_float,
                            non_negative_int, positive_int)
from ditlab.configlib import ConfigError
from ditlab.eval.cli import add_fid_parser
from ditlab.experiments.ablate_cli import add_ablate_parser
from ditlab.tasks.commands import TASK_CLIS
from ditlab.train.ema_cli import add_ema_parser


GRID_NUM = 64  # samples in `ditlab sample --grid` (--grid-num)


def resolve_config_path(name: str | None) -> str | None:
    """A YAML path, or a preset name looked up in ./configs (`cifar10` -> configs/cifar10.yaml)."""
    if name is None or Path(name).exists():
        return name
    for candidate in (Path("configs") / name, Path("configs") / f"{name}.yaml"):
        if candidate.exists():
            return str(candidate)
    raise FileNotFoundError(f"config {name!r} not found (looked for the file and for configs/{name}.yaml)")


def cmd_train(args) -> int:
    import gc

    from ditlab.config import load_config
    from ditlab.train.distributed import shutdown
    from ditlab.train.trainer import Trainer

    cfg = load_config(resolve_config_path(args.config), args.overrides)
    trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress)
    info, code = trainer.dist, None
    try:
        code = trainer.run()
    finally:
        step, run_dir = trainer.step, trainer.run_dir
        # DDP holds the process group: free it now, not in the interpreter's teardown, where a gloo
        # group's worker threads still joinable at exit abort the process ("terminate called without
        # an active exception", SIGABRT on a rank that had finished).
        del trainer
        gc.collect()
        shutdown(info, sync=code is not None)
    if code == 0 and info.is_main:
        print(f"ditlab: finished at step {step}; run directory {run_dir}")
    return code


def cmd_sample(args) -> int:
    from ditlab.train.distributed import init_distributed, shutdown

    info = init_distributed(args.device)  # under torchrun each rank samples its share of the indices
    try:
        return _sample(args, info)
    finally:
        shutdown(info)


def default_samples_path(run, settings, seed: int) -> Path:
    """RUN/samples/CHECKPOINT_SAMPLERSTEPS_cfgW[_iLO-HI][_csW][_tsS][_PATH]_seedK.npz: inside the run, one name
    per setting (the guidance interval, condition strength and time shift only when they change anything)."""
    path = f"_{settings.path.replace(':', '')}" if settings.path else ""
    name = f"{run.checkpoint.name.removesuffix('.safetensors')}_{settings.sampler}{settings.steps}_cfg{settings.cfg_scale:g}"
    if settings.cfg_interval is not None and settings.cfg_scale != 1.0:  # the interval only matters when guiding
        name += f"_i{settings.cfg_interval[0]:g}-{settings.cfg_interval[1]:g}"
    if settings.cond_scale != 1.0:
        name += f"_cs{settings.cond_scale:g}"
    if settings.time_shift != 1.0:
        name += f"_ts{settings.time_shift:g}"
    return run.run_dir / "samples" / f"{name}{path}_seed{seed}.npz"


def _split_contexts(values):
    """--context values -> (the unnamed set's FILE or None, ((NAME, FILE), ...) or None)."""
    plain, named = [], []
    for v in values or []:
        name, sep, path = v.partition("=")
        if sep and name.isidentifier():
            if name in dict(named):
                raise ValueError(f"--context {v}: the set {name!r} is given twice")
            named.append((name, path))
        else:
            plain.append(v)
    if len(plain) > 1:
        raise ValueError(f"--context given {len(plain)} unnamed files {plain}; name the others (--context NAME=FILE)")
    return (plain[0] if plain else None), (tuple(named) or None)


def _sample(args, info) -> int:
    import torch

    from ditlab.generation import (batch_bar, check_settings, compile_for_sampling, generate, precision_name,
                                   sampling_autocast, save_samples, settings_of)
    from ditlab.imageio import save_image_grid
    from ditlab.models.kernels import configure_fast_kernels, fast_kernels_on
    from ditlab.runs import load_run
    from ditlab.tasks.base import SampleInputs
    from ditlab.train.distributed import gather_objects, rank_device, rank_slice

    device = rank_device(info, args.device, setting="--device")
    run = load_run(args.run_dir, which=args.weights, checkpoint=args.checkpoint, device=device)
    if args.fast_kernels is not None:  # before any input is read: `on` without CUDA fails at once
        configure_fast_kernels(run.model, args.fast_kernels, device, name="--fast-kernels")
    if args.path and run.kind != "lift":
        raise ValueError(f"--path applies to task.kind=lift runs; {args.run_dir} is task.kind={run.kind!r}")
    s = run.cfg.sample
    sampler = args.sampler or s.sampler
    eta = args.eta if args.eta is not None else (s.eta if sampler == "ddim" else 0.0)
    path = args.path  # None: the run's own (LIFT: lift.sample_path, recorded through task.sample_meta)
    settings = settings_of(s, sampler=sampler, steps=args.steps, cfg_scale=args.cfg, eta=eta, path=path,
                           cfg_interval=tuple(args.cfg_interval) if args.cfg_interval else None,
                           cond_scale=args.cond_scale, time_shift=args.time_shift)
    context, contexts = _split_contexts(args.context)
    if args.cfg_context:
        import dataclasses

        settings = dataclasses.replace(settings, cfg_context=tuple(args.cfg_context))
    check_settings(settings, run.task)  # before any data is read
    if args.cfg_interval and settings.cfg_scale in (0.0, 1.0) and all(w == 1.0 for _, w in settings.cfg_context):
        raise ValueError(f"--cfg-interval applies when guiding (--cfg other than 0 and 1, or --cfg-context); this "
                         f"samples with cfg {settings.cfg_scale:g}, where the interval changes nothing")
    if args.grid_num is not None and not args.grid:
        raise ValueError("--grid-num applies with --grid PNG (the picture it sizes)")
    if args.grid and not hasattr(run.task, "preview_figure"):
        raise ValueError(f"--grid: a task.kind={run.kind} run has no picture of its samples")
    out_path = Path(args.out) if args.out else default_samples_path(run, settings, args.seed)
    if out_path.is_dir():  # save_samples would write FOLDER.npz beside it
        raise ValueError(f"--out {args.out}: is a folder; `ditlab sample` writes one .npz file: name it "
                         f"(e.g. {out_path / default_samples_path(run, settings, args.seed).name})")
    inputs = SampleInputs(data=args.data, context=context, contexts=contexts, lo_run=args.lo_run,
                          lo_checkpoint=args.lo_checkpoint)
    conditions = TASK_CLIS[run.kind].sample_conditions(run, inputs, args.num,
                                                       progress=info.is_main and not args.no_progress)
    cascade = getattr(run.task, "cascade", None)  # LIFT's --lo-run network, loaded by sample_conditions
    if args.fast_kernels is not None and cascade is not None:
        configure_fast_kernels(cascade.model, args.fast_kernels, device, name="--fast-kernels")
    amp = sampling_autocast(device, args.fp32)
    model = compile_for_sampling(run.model, device, args.num, args.compile)
    # Sample i depends only on (seed, i): a rank's share [start, stop) gives the same samples as one process.
    share = rank_slice(info, args.num)
    mine = {k: v[share] for k, v in conditions.items()}
    done = []
    try:
        outputs = generate(run.task, model, share.stop - share.start, args.seed, settings, mine,
                           batch_size=args.batch_size, start=share.start, device=device, autocast_dtype=amp,
                           progress=batch_bar(info.is_main and not args.no_progress),
                           on_batch=lambda out, idx: done.append(len(idx)))
    except KeyboardInterrupt:
        print(f"\nditlab: interrupted after {sum(done)} of {args.num} samples; nothing was written", file=sys.stderr)
        return 130
    try:
        if info.enabled:  # rank order = sample order
            parts = gather_objects(info, outputs)
            if not info.is_main:
                return 0
            outputs = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        meta = {"task": run.kind, "run": str(run.run_dir), "checkpoint": str(run.checkpoint),
                "weights": args.weights or (None if run.checkpoint.suffix == ".safetensors" else "ema"),
                "seed": args.seed, "num": args.num, **settings.describe(),
                "factor": None, **run.task.sample_meta(settings),
                "data": args.data, "context": context, "lo_run": args.lo_run,
                # the kernel path (same mathematics; rounding differs between the two)
                "fast_kernels": fast_kernels_on(run.model), "precision": precision_name(amp),
                **({"lo_checkpoint": str(cascade.checkpoint)} if getattr(cascade, "checkpoint", None) else {}),
                **({"contexts": dict(contexts)} if contexts else {})}
        out = save_samples(out_path, run.task, outputs, meta)  # atomic
    except KeyboardInterrupt:
        print(f"\nditlab: interrupted after all {sum(done)} samples of this process were generated, before "
              f"{out_path} was written; nothing was written", file=sys.stderr)
        return 130
    print(f"ditlab: wrote {args.num} samples of a task.kind={run.kind} run ({settings.sampler}, {settings.steps} steps"
          f"{f', path {settings.path}' if settings.path else ''}, cfg {settings.cfg_scale}"
          f"{f' in {settings.cfg_interval}' if settings.cfg_interval else ''}, seed {args.seed}, "
          f"{run.checkpoint.name}) to {out}")
    if args.grid:
        n = min(args.grid_num or GRID_NUM, args.num)
        first = {k: v[:n] for k, v in outputs.items()}
        images, nrow = run.task.preview_figure(first, {k: v[:n] for k, v in conditions.items()})
        grid = save_image_grid(images, args.grid, nrow=nrow)
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
    result = bench_train(cfg, args.warmup, args.steps_per_repeat, args.repeats)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: one line, from rank 0
        print(json.dumps(result))
    return 0


def cmd_bench_sample(args) -> int:
    import json

    from ditlab.bench import bench_sample

    print(json.dumps(bench_sample(args.run_dir, args.num, args.batch_size, args.sampler, args.steps, args.cfg,
                                  args.repeats, args.device, compile=args.compile == "on",
                                  checkpoint=args.checkpoint, which=args.weights, fast_kernels=args.fast_kernels,
                                  fp32=args.fp32)))
    return 0


def add_fast_kernels(parser, lo_run: bool = False) -> None:
    also = " (and the --lo-run network)" if lo_run else ""
    parser.add_argument("--fast-kernels", choices=["auto", "on", "off"], default=None,
                        help=f"the fused adaLN kernels (train.fast_kernels) for the run's network{also}: auto = where "
                             "CUDA and Triton are present; default: as each run trained (auto unless it trained "
                             "with off)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ditlab", description="Diffusion transformers with per-token noise levels.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML preset and key=value overrides")
    t.add_argument("config", help="YAML preset (path, or a name in ./configs)")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=2e-4")
    add_set(t)
    t.add_argument("--resume", action="store_true", help="continue the run in train.run_dir from its latest checkpoint")
    add_no_progress(t, "no progress bars (logs still go to metrics.jsonl)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate from a run (any task kind) into a samples .npz with its metadata")
    s.add_argument("run_dir", help="a run directory (train.run_dir of a ditlab train run)")
    s.add_argument("-n", "--num", type=positive_int, default=64,
                   help="number of samples (under torchrun write -n: torchrun's own parser reads --num as its "
                        "--numa-binding)")
    s.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None, help="default: the run's sample.sampler")
    s.add_argument("--steps", type=positive_int, default=None, help="default: the run's sample.steps")
    s.add_argument("--cfg", type=finite_float, default=None,
                   help="classifier-free guidance scale (1 = none; default: the run's sample.cfg_scale)")
    s.add_argument("--cfg-interval", type=finite_float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="guide only where the noise-to-signal ratio sigma/alpha is in (LO, HI], e.g. 0.28 5.42 "
                        "(default: the run's sample.cfg_interval, else every step)")
    s.add_argument("--cond-scale", type=finite_float, default=1.0, metavar="W",
                   help="superres runs: strength of the condition pathway, apart from CFG (1 = as trained; e.g. 0.8 "
                        "or 0.5 against posterior collapse; 0 = the unconditional pathway; docs/superres.md)")
    s.add_argument("--time-shift", type=finite_float, default=None, metavar="S",
                   help="flow runs: warp the sampling grid t' = S t / (1 + (S - 1) t) (S > 1 spends more steps at "
                        "high noise; default: the run's sample.time_shift; docs/diffusion.md)")
    s.add_argument("--eta", type=finite_float, default=None,
                   help="DDIM eta, --sampler ddim only (0 deterministic, 1 = DDPM posterior; default sample.eta)")
    s.add_argument("--seed", type=int, default=0, help="sample i's noise depends only on (seed, i)")
    s.add_argument("--out", default=None,
                   help="output .npz (default RUN/samples/CHECKPOINT_SAMPLERSTEPS_cfgW[_...]_seedK.npz); images: arr_0 "
                        "uint8 N x H x W x 3 and arr_1 labels; scene: points, scene_features, scene_mask; icl: x, y, "
                        "y_sampled; every file: ditlab_meta")
    s.add_argument("--grid", default=None, metavar="PNG", help="also write a PNG of the first --grid-num samples")
    s.add_argument("--grid-num", type=positive_int, default=None,
                   help=f"samples in the --grid picture (default {GRID_NUM}; only with --grid)")
    s.add_argument("--batch-size", type=positive_int, default=256, help="samples per network batch")
    add_checkpoint(s)
    s.add_argument("--path", default=None,
                   help="task.kind=lift runs: the path through the (t_hi, t_lo) grid: diagonal, lo-first, hi-first, "
                        "shift:D, lo-fixed, lo-random, lo-oracle (needs --data), cascade (needs --lo-run), dp-hi, "
                        "dp-total (dp-*: after `ditlab lift errors RUN`; default: the run's lift.sample_path)")
    add_data(s, "superres runs and LIFT's --path lo-oracle: high-resolution images whose downsampled copies condition "
                "the samples; with --num below the set's size, a seeded subset spread over the whole set (all "
                "classes), the one `ditlab psnr` pairs the samples with", old=("--cond",))
    s.add_argument("--context", default=None, action="append", metavar="[NAME=]FILE",
                   help="image runs trained with data.context_path: a context file whose rows 0..N-1 condition samples "
                        "0..N-1 (and give their labels, if it has 'labels'); --cfg drops context and label together. "
                        "NAME=FILE (repeatable): the named set NAME of data.contexts (docs/context_sets.md)")
    add_cfg_context(s)
    s.add_argument("--lo-run", default=None, metavar="RUN_LO",
                   help="LIFT's --path cascade: a task.kind=image run at the low resolution (the LIFT run's size / "
                        "task.factor) generates the low resolution, which the LIFT run then holds clean "
                        "(docs/lift.md)")
    s.add_argument("--lo-checkpoint", default=None, metavar="CKPT",
                   help="the checkpoint of --lo-run, as --checkpoint: a step name, 'latest' or 'best' "
                        "(train.eval_every), a checkpoint folder (default: the latest)")
    add_device(s)
    add_fp32(s)
    add_no_progress(s, "no progress bar")
    add_compile(s)
    add_fast_kernels(s, lo_run=True)
    s.set_defaults(func=cmd_sample)

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print the resolved configuration")
    show.add_argument("config", nargs="?", default=None, help="YAML preset (path, or a name in ./configs); default: the built-in defaults")
    show.add_argument("overrides", nargs="*", help="section.key=value overrides")
    add_set(show)
    show.set_defaults(func=cmd_config_show)

    b = sub.add_parser("bench", help="throughput benchmarks (JSON on stdout)")
    bsub = b.add_subparsers(dest="bench_command", required=True)
    bt = bsub.add_parser("train", help="images/s, MFU and peak memory of the full training step")
    bt.add_argument("config", help="YAML preset (path, or a name in ./configs)")
    bt.add_argument("overrides", nargs="*", help="section.key=value overrides")
    add_set(bt)
    bt.add_argument("--warmup", type=non_negative_int, default=15, help="untimed steps first (compilation)")
    bt.add_argument("--steps-per-repeat", type=positive_int, default=20, help="training steps per timed repeat")
    # --steps is a sampler's step count everywhere else; here it was the training steps of a repeat
    bt.add_argument("--steps", dest="steps_per_repeat", type=positive_int, action=DeprecatedAlias,
                    new="--steps-per-repeat", help=argparse.SUPPRESS)
    bt.add_argument("--repeats", type=positive_int, default=5, help="timed repeats (the median is reported)")
    bt.set_defaults(func=cmd_bench_train)
    bs = bsub.add_parser("sample", help="images/s of sampling from a run")
    bs.add_argument("run_dir", help="a run directory (train.run_dir of a ditlab train run)")
    bs.add_argument("-n", "--num", type=positive_int, default=1024, help="samples per timed repeat")
    bs.add_argument("--batch-size", type=positive_int, default=256, help="samples per network batch")
    bs.add_argument("--sampler", choices=SAMPLER_CHOICES, default="heun", help="the sampler timed")
    bs.add_argument("--steps", type=positive_int, default=50, help="sampler steps")
    bs.add_argument("--cfg", type=finite_float, default=1.0, help="classifier-free guidance scale (1 = none)")
    bs.add_argument("--repeats", type=positive_int, default=3, help="timed repeats (the median is reported)")
    add_checkpoint(bs)
    add_device(bs)
    add_fp32(bs)
    bs.add_argument("--compile", choices=["on", "off"], default="off", help="torch.compile the network first")
    add_fast_kernels(bs)
    bs.set_defaults(func=cmd_bench_sample)

    r = sub.add_parser("report", help="write report.md and a loss plot for a run")
    r.add_argument("run_dir", help="a run directory (train.run_dir of a ditlab train run)")
    r.add_argument("--grid", default=None, help="a sample grid PNG to include")
    r.set_defaults(func=cmd_report)

    add_fid_parser(sub)
    add_ablate_parser(sub)
    add_ema_parser(sub)
    for task_cli in TASK_CLIS.values():  # each task kind's own subcommands (ditlab.tasks.commands)
        task_cli.add_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
    except UsageError as err:
        print(f"ditlab: error: {err}", file=sys.stderr)
        return 1
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


def parse_args(parser, argv):
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
    if hasattr(args, "overrides"):  # --set KEY=VALUE: the same overrides, after the positional ones
        args.overrides = list(args.overrides) + list(getattr(args, "set_overrides", []))
    return args


if __name__ == "__main__":
    sys.exit(main())

"""``ditlab icl eval RUN [--baseline RUN2] ...``: evaluate an in-context regression run.

Prints the verdict as one JSON line and writes summary.json, summary.md and the plots to --out
(default RUN/icl_eval). ``ditlab.tasks.commands`` lists :func:`add_cli` for ``ditlab/cli.py``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ditlab.cliargs import add_checkpoint, add_device, add_fp32, add_no_progress, finite_float, positive_int
from ditlab.tasks.base import SampleInputs, refuse_inputs


def sample_conditions(run, inputs: SampleInputs, num: int, progress: bool = True) -> dict:
    """``ditlab sample`` on an ICL run: ``num`` held-out prompts (the run's icl.eval_seed, at the full
    dimension, in network units), one draw of every query y per prompt."""
    from ditlab.tasks.icl.eval import held_out_prompts

    refuse_inputs("icl", inputs, (), ": its prompts are drawn from the run's own prior (icl.eval_seed)")
    prompts = held_out_prompts(run.cfg.icl, run.info["d"], run.info["n_points"], num, run.cfg.icl.eval_seed)
    return {"x": prompts.x, "y": prompts.y}


def cmd_icl_eval(args) -> int:
    from ditlab.devices import resolve_device
    from ditlab.generation import sampling_autocast
    from ditlab.tasks.icl.eval import EvalSettings, evaluate
    from ditlab.tasks.icl.report import write_report
    from ditlab.runs import load_run

    device = resolve_device(args.device)
    run = load_run(args.run_dir, which=args.weights, checkpoint=args.checkpoint, device=device, kind="icl",
                   command="`ditlab icl eval`")
    if args.baseline_checkpoint and not args.baseline:
        raise ValueError("--baseline-checkpoint needs --baseline (the baseline's run directory)")
    baseline = (load_run(args.baseline, checkpoint=args.baseline_checkpoint, device=device, kind="icl",
                         command="`ditlab icl eval --baseline`") if args.baseline else None)
    if baseline is not None and baseline.cfg.icl.objective != "mse":
        raise ValueError(f"--baseline {args.baseline} must be a deterministic run (icl.objective=mse)")
    icl = run.cfg.icl
    settings = EvalSettings(
        prompts=args.prompts or icl.eval_prompts, samples=args.samples or icl.eval_samples,
        sampler=args.sampler or icl.eval_sampler, steps=args.steps or icl.eval_steps, eta=args.eta,
        seed=icl.eval_seed if args.seed is None else args.seed, batch_size=args.batch_size,
        bootstrap=args.bootstrap)
    if settings.samples < 2:
        raise ValueError(f"--samples must be >= 2 (intervals and variances need several draws), got {settings.samples}")
    report = evaluate(run, settings, baseline, device, progress=not args.no_progress,
                      autocast_dtype=sampling_autocast(device, args.fp32))
    files = write_report(report, Path(args.out or Path(args.run_dir) / "icl_eval"))
    print(json.dumps({"verdict": report["verdict"], "files": {k: str(v) for k, v in files.items()}}))
    return 0


def add_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("icl", help="in-context regression tools")
    sub = p.add_subparsers(dest="icl_command", required=True)
    e = sub.add_parser("eval", help="error and calibration vs k against the exact Bayesian answer")
    e.add_argument("run_dir", help="a run directory (train.run_dir of a ditlab train run)")
    e.add_argument("--baseline", default=None, help="a deterministic run (icl.objective=mse) of the same problem")
    add_checkpoint(e)  # the run directory still supplies config.yaml and model.json
    e.add_argument("--baseline-checkpoint", default=None,
                   help="--checkpoint for --baseline (its EMA weights, or the .safetensors file given)")
    e.add_argument("--prompts", type=positive_int, default=None, help="held-out prompts (default: the run's icl.eval_prompts)")
    e.add_argument("--samples", type=positive_int, default=None, help="samples per prompt (default: icl.eval_samples)")
    e.add_argument("--sampler", choices=["ddpm", "ddim"], default=None, help="default: icl.eval_sampler")
    e.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: icl.eval_steps)")
    e.add_argument("--eta", type=finite_float, default=0.0, help="DDIM eta, --sampler ddim only (0 deterministic)")
    e.add_argument("--seed", type=int, default=None, help="prompts and sampler noise (default: icl.eval_seed)")
    e.add_argument("--batch-size", type=positive_int, default=8192, help="sequences per network call")
    e.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap resamples for the bands")
    add_device(e)
    add_fp32(e)
    add_no_progress(e)
    e.add_argument("--out", default=None, help="output folder (default RUN/icl_eval)")
    e.set_defaults(func=cmd_icl_eval)
    return p

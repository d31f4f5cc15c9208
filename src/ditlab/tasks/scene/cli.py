"""``ditlab scene eval RUN``: the command line of :mod:`ditlab.tasks.scene.eval`.

Writes OUT/eval.json (metrics of the model and the baselines) and OUT/scenes.png (a few held-out
scenes: scene grey, target blue, generated points red), and prints the metrics as one JSON line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ditlab.cliargs import (SAMPLER_CHOICES, add_cfg_context, add_checkpoint, add_device, add_fp32, add_no_progress,
                            finite_float, non_negative_int, positive_int)
from ditlab.tasks.base import SampleInputs, refuse_inputs


def sample_conditions(run, inputs: SampleInputs, num: int, progress: bool = True) -> dict:
    """``ditlab sample`` on a scene run: ``num`` held-out scenes (the run's scene.eval_seed)."""
    from ditlab.tasks.scene.data import load_eval_scenes

    refuse_inputs("scene", inputs, (), ": its scenes are drawn from the run's scene settings (scene.eval_seed)")
    scenes = load_eval_scenes(run.cfg.scene, num, pool=1)
    cond = scenes.conditions()
    return cond if run.info.get("describe_target") else {"features": cond["features"], "mask": cond["mask"]}


def cmd_scene_eval(args) -> int:
    from ditlab.devices import resolve_device
    from ditlab.generation import check_settings, sampling_autocast, settings_of
    from ditlab.tasks.scene.eval import evaluate_run
    from ditlab.runs import load_run
    from ditlab.tasks.scene.plot import save_figure, scene_figure
    from ditlab.tasks.scene.scenes import surface_distance

    device = resolve_device(args.device)
    run = load_run(args.run_dir, device=device, kind="scene", command="`ditlab scene eval`",
                   which=args.weights, checkpoint=args.checkpoint)
    settings = settings_of(run.cfg.sample, sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg,
                           cfg_context=tuple(args.cfg_context) if args.cfg_context else None)
    if settings.sampler != "ddim":
        settings = dataclasses.replace(settings, eta=0.0)  # sample.eta belongs to ddim (as in `ditlab sample`)
    check_settings(settings, run.task)  # e.g. --cfg-context naming a set the run does not have
    sampler, steps, cfg_scale = settings.sampler, settings.steps, settings.cfg_scale
    num = args.scenes or run.cfg.scene.eval_scenes
    report, points, scenes = evaluate_run(run, num, settings, args.seed, args.batch_size, device,
                                          unconditional=not args.no_unconditional, progress=not args.no_progress,
                                          autocast_dtype=sampling_autocast(device, args.fp32))
    out = Path(args.out) if args.out else Path(args.run_dir) / "scene_eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    n = min(args.figure_scenes, num)
    if n > 0:
        dist = report["metrics"]["model"]["distance"]
        titles = [f"scene {i}: {surface_distance(scenes.targets[i], points[i]).mean():.3f} mean dist" for i in range(n)]
        fig = scene_figure(scenes.features[:n], scenes.mask[:n], points[:n], titles=titles,
                           suptitle=f"{sampler} {steps} steps, cfg {cfg_scale}: mean distance {dist:.4f} "
                                    f"over {num} held-out scenes (grey scene, blue target, red generated)")
        save_figure(fig, out / "scenes.png")
    print(json.dumps({"out": str(out), **{k: v for k, v in report["metrics"].items()}}))
    return 0


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``ditlab scene eval RUN ...`` to an argparse sub-parser set."""
    sc = subparsers.add_parser("scene", help="scene task tools (task.kind=scene)")
    ssub = sc.add_subparsers(dest="scene_command", required=True)
    e = ssub.add_parser("eval", help="distance and coverage of generated points on held-out scenes, vs baselines")
    e.add_argument("run_dir", help="a run directory (train.run_dir of a ditlab train run)")
    e.add_argument("--scenes", type=positive_int, default=None, help="held-out scenes (default: the run's scene.eval_scenes)")
    e.add_argument("--cfg", type=finite_float, default=None, help="guidance scale on the scene (default: sample.cfg_scale)")
    add_cfg_context(e)
    e.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None,
                   help="default: the run's sample.sampler")
    e.add_argument("--steps", type=positive_int, default=None, help="default: the run's sample.steps")
    e.add_argument("--seed", type=int, default=0, help="noise and baseline seed")
    e.add_argument("--batch-size", type=positive_int, default=128, help="scenes per network batch")
    e.add_argument("--no-unconditional", action="store_true", help="skip the null-context model baseline")
    e.add_argument("--figure-scenes", type=non_negative_int, default=6, help="scenes drawn in scenes.png (0: no figure)")
    add_checkpoint(e)
    add_device(e)
    add_fp32(e)
    add_no_progress(e)
    e.add_argument("--out", default=None, help="output folder for eval.json and scenes.png (default RUN/scene_eval)")
    e.set_defaults(func=cmd_scene_eval)
    return sc

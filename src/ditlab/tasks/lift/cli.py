"""``ditlab lift``: the per-node error grid of a LIFT run, its heat maps and planned paths.

::

    ditlab lift errors RUN --data DATASET [--levels K] [--num N] [--steps S]   # RUN/lift_errors.npz + heat map PNG
    ditlab lift paths RUN [--steps S]                                          # each path's (t_hi, t_lo) rows, JSON

``ditlab sample RUN --path NAME`` samples along a path (ditlab.tasks.lift.paths);
``ditlab sample RUN --path cascade --lo-run RUN_LO`` generates each batch's low resolution with a
single-scale run first (ditlab.tasks.lift.cascade).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ditlab.cliargs import (DeprecatedAlias, add_checkpoint, add_data, add_device, add_fp32, add_no_progress,
                            positive_int, require_data)
from ditlab.tasks.base import SampleInputs, refuse_inputs
from ditlab.tasks.lift.paths import DP_PATHS, PATH_NAMES, PATH_NEEDS


def sample_conditions(run, inputs: SampleInputs, num: int, progress: bool = True) -> dict:
    """``ditlab sample`` on a LIFT run: none, except for --path lo-oracle, whose low resolution is the
    pooled copy of --data's images, and --path cascade, whose low resolution --lo-run RUN_LO generates
    batch by batch: RUN_LO is loaded, checked and attached to the task (ditlab.tasks.lift.cascade).
    Both are checked against the path when sampling starts (LiftTask.start)."""
    refuse_inputs("lift", inputs, ("data", "lo_run", "lo_checkpoint"))
    if inputs.lo_checkpoint is not None and inputs.lo_run is None:
        raise ValueError("--lo-checkpoint picks the checkpoint of --lo-run RUN_LO; give --lo-run")
    if inputs.lo_run is not None:
        from ditlab.tasks.lift.cascade import attach_lo_run

        attach_lo_run(run, inputs)
    if inputs.data is None:
        return {}
    from ditlab.tasks.superres.cli import condition_images

    return {"images": condition_images(inputs.data, run.info["image_size"], num, progress=progress)}


def lift_node_errors(run, run_dir, data: str, grid: int, num: int, batch_size: int, seed: int, device,
                     steps: int, out_png=None, progress: bool = False, autocast_dtype=None):
    """Measure, save (RUN/lift_errors.npz) and draw the error grid of a loaded LIFT run, with its
    diagonal and dp-* paths at ``steps`` steps drawn on the heat maps, the network in ``autocast_dtype`` (None:
    fp32). Returns (errors, npz path, png path)."""
    from ditlab.data import evaluation_subset, load_image_data
    from ditlab.tasks.lift.errors import measure_node_errors, plot_node_errors, save_node_errors
    from ditlab.tasks.lift.model import ERRORS_FILE

    if run.cfg.task.kind != "lift":
        raise ValueError(f"{run_dir} is task.kind={run.cfg.task.kind!r}; `ditlab lift errors` needs a lift run")
    images = load_image_data(data, run.info["image_size"], progress=False)
    if len(images.images) < num:
        raise ValueError(f"--data {data} holds {len(images.images)} images, fewer than --num {num}")
    pick = evaluation_subset(len(images.images), num)  # all classes, not the first class folders
    labels = None
    if run.task.num_classes:
        labels = images.labels[pick] if images.num_classes else None
        if labels is None:
            raise ValueError(f"{run_dir} is class-conditional but --data {data} has no labels")
    errors = measure_node_errors(run.task, run.model, images.images[pick], labels, grid, batch_size, seed, device,
                                 progress, autocast_dtype)
    npz = save_node_errors(Path(run_dir) / ERRORS_FILE, errors)
    run.task.use_errors(errors)
    paths = {name: run.task.path(steps, name) for name in ("diagonal",) + DP_PATHS}
    png = plot_node_errors(errors, out_png or Path(run_dir) / "lift_errors.png", paths,
                           title=f"{Path(run_dir).name}: x0 errors on {num} images, paths at {steps} steps")
    return errors, npz, png


def cmd_lift_errors(args) -> int:
    from ditlab.devices import resolve_device
    from ditlab.generation import sampling_autocast
    from ditlab.runs import load_run

    device = resolve_device(args.device)
    run = load_run(args.run_dir, device=device, which=args.weights, checkpoint=args.checkpoint)
    grid = args.levels or run.cfg.lift.dp_grid
    steps = args.steps or run.cfg.sample.steps
    data = require_data(args, "held-out images the error grid is measured on")
    errors, npz, png = lift_node_errors(run, args.run_dir, data, grid, args.num, args.batch_size, args.seed,
                                        device, steps, args.out, progress=not args.no_progress,
                                        autocast_dtype=sampling_autocast(device, args.fp32))
    print(json.dumps({"errors": str(npz), "heatmap": str(png), "levels": grid, "images": errors.num_images}))
    return 0


def cmd_lift_paths(args) -> int:
    from ditlab.runs import load_run

    run = load_run(args.run_dir)
    steps = args.steps or run.cfg.sample.steps
    has_errors = run.task.errors is not None
    names = [n for n in PATH_NAMES if n != "shift:D" and (has_errors or n not in DP_PATHS)]
    for name in names:
        path = run.task.path(steps, name)
        row = {"path": name, "streams": path.streams, "hold": path.hold,
               "times": [[round(v, 5) for v in row] for row in path.times.tolist()]}
        if name in PATH_NEEDS:
            row["needs"] = PATH_NEEDS[name]  # e.g. cascade: `ditlab sample RUN --path cascade --lo-run RUN_LO`
        print(json.dumps(row))
    return 0


def add_cli(subparsers):
    lp = subparsers.add_parser("lift", help="LIFT (two-scale) runs: per-node error grid, heat maps, sampling paths")
    sub = lp.add_subparsers(dest="lift_command", required=True)
    e = sub.add_parser("errors", help="x0 errors of both scales over the (t_hi, t_lo) grid on held-out images; "
                                      "writes RUN/lift_errors.npz (for --path dp-hi / dp-total) and a heat map")
    e.add_argument("run_dir", help="a run directory (train.run_dir of a ditlab train run)")
    add_data(e, "held-out images (e.g. a test split) the errors are measured on")
    e.add_argument("--levels", type=positive_int, default=None,
                   help="K: K + 1 noise levels per scale (default lift.dp_grid)")
    e.add_argument("--grid", dest="levels", type=positive_int, action=DeprecatedAlias, new="--levels",
                   help=argparse.SUPPRESS)
    e.add_argument("-n", "--num", type=positive_int, default=256, help="images averaged per node")
    e.add_argument("--steps", type=positive_int, default=None, help="step budget of the paths drawn (default sample.steps)")
    e.add_argument("--batch-size", type=positive_int, default=256, help="images per network batch")
    e.add_argument("--seed", type=int, default=0, help="seed of the noise draws (shared by every node)")
    add_checkpoint(e)
    e.add_argument("--out", default=None, help="heat map PNG (default RUN/lift_errors.png)")
    e.add_argument("--png", dest="out", action=DeprecatedAlias, new="--out", help=argparse.SUPPRESS)
    add_device(e)
    add_fp32(e)
    add_no_progress(e)
    e.set_defaults(func=cmd_lift_errors)
    p = sub.add_parser("paths", help="print every sampling path's (t_hi, t_lo) rows (JSON lines; 'needs' names what "
                                     "a path takes: lo-oracle --data, cascade --lo-run RUN_LO)")
    p.add_argument("run_dir", help="a run directory (train.run_dir of a ditlab train run)")
    p.add_argument("--steps", type=positive_int, default=None, help="steps of each path (default sample.steps)")
    p.set_defaults(func=cmd_lift_paths)
    return lp

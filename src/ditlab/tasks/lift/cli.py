"""``ditlab lift``: the per-node error grid of a LIFT run, its heat maps and planned paths.

::

    ditlab lift errors RUN --data DATASET [--grid K] [--num N] [--steps S]   # RUN/lift_errors.npz + heat map PNG
    ditlab lift paths RUN [--steps S]                                        # each path's (t_hi, t_lo) rows, JSON

``ditlab sample RUN --path NAME`` samples along a path (:func:`choose_sample_path`).
"""
from __future__ import annotations

import json
from pathlib import Path

from ditlab.tasks.lift.paths import DP_PATHS, PATH_NAMES


def choose_sample_path(run, run_dir, name) -> str:
    """Point the task of a loaded run at path ``name`` (None: the run's lift.sample_path), reading
    RUN/lift_errors.npz for the dp-* paths. Returns the path's name."""
    if run.cfg.task.kind != "lift":
        if name:
            raise ValueError(f"--path applies to task.kind=lift runs; {run_dir} is task.kind={run.cfg.task.kind!r}")
        return ""
    name = name or run.cfg.lift.sample_path
    run.task.load_errors(run_dir)
    run.task.use_path(name)
    return name


def lift_node_errors(run, run_dir, data: str, grid: int, num: int, batch_size: int, seed: int, device,
                     steps: int, out_png=None):
    """Measure, save (RUN/lift_errors.npz) and draw the error grid of a loaded LIFT run, with its
    diagonal and dp-* paths at ``steps`` steps drawn on the heat maps. Returns (errors, npz path, png path)."""
    from ditlab.data import evaluation_subset, load_image_data
    from ditlab.tasks.lift.errors import measure_node_errors, plot_node_errors, save_node_errors
    from ditlab.tasks.lift.task import ERRORS_FILE

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
    errors = measure_node_errors(run.task, run.model, images.images[pick], labels, grid, batch_size, seed, device)
    npz = save_node_errors(Path(run_dir) / ERRORS_FILE, errors)
    run.task.use_path("diagonal", errors)
    paths = {name: run.task.path(steps, name) for name in ("diagonal",) + DP_PATHS}
    png = plot_node_errors(errors, out_png or Path(run_dir) / "lift_errors.png", paths,
                           title=f"{Path(run_dir).name}: x0 errors on {num} images, paths at {steps} steps")
    return errors, npz, png


def cmd_lift_errors(args) -> int:
    from ditlab.devices import resolve_device
    from ditlab.runs import load_run

    device = resolve_device(args.device)
    run = load_run(args.run_dir, device=device)
    grid = args.grid or run.cfg.lift.dp_grid
    steps = args.steps or run.cfg.sample.steps
    errors, npz, png = lift_node_errors(run, args.run_dir, args.data, grid, args.num, args.batch_size, args.seed,
                                        device, steps, args.png)
    print(json.dumps({"errors": str(npz), "heatmap": str(png), "grid": grid, "images": errors.num_images}))
    return 0


def cmd_lift_paths(args) -> int:
    from ditlab.runs import load_run

    run = load_run(args.run_dir)
    steps = args.steps or run.cfg.sample.steps
    choose_sample_path(run, args.run_dir, "diagonal")  # also reads RUN/lift_errors.npz when there is one
    has_errors = run.task.errors is not None
    names = [n for n in PATH_NAMES if n != "shift:D" and (has_errors or n not in DP_PATHS)]
    for name in names:
        path = run.task.path(steps, name)
        print(json.dumps({"path": name, "streams": path.streams, "hold": path.hold,
                          "times": [[round(v, 5) for v in row] for row in path.times.tolist()]}))
    return 0


def add_lift_parser(subparsers):
    lp = subparsers.add_parser("lift", help="LIFT (two-scale) runs: per-node error grid, heat maps, sampling paths")
    sub = lp.add_subparsers(dest="lift_command", required=True)
    e = sub.add_parser("errors", help="x0 errors of both scales over the (t_hi, t_lo) grid on held-out images; "
                                      "writes RUN/lift_errors.npz (for --path dp-hi / dp-total) and a heat map")
    e.add_argument("run_dir")
    e.add_argument("--data", required=True, help="held-out images (any data set ditlab reads), e.g. a test split")
    e.add_argument("--grid", type=int, default=None, help="K: K + 1 levels per scale (default lift.dp_grid)")
    e.add_argument("--num", type=int, default=256, help="images averaged per node")
    e.add_argument("--steps", type=int, default=None, help="step budget of the paths drawn (default sample.steps)")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--seed", type=int, default=0, help="seed of the noise draws (shared by every node)")
    e.add_argument("--png", default=None, help="heat map file (default RUN/lift_errors.png)")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_lift_errors)
    p = sub.add_parser("paths", help="print every sampling path's (t_hi, t_lo) rows (JSON lines)")
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, default=None)
    p.set_defaults(func=cmd_lift_paths)
    return lp

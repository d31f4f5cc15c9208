"""The superres task on the command line: `ditlab psnr`, `ditlab diagnose collapse` and the
conditions of `ditlab sample RUN --data DATASET`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ditlab.cliargs import (SAMPLER_CHOICES, DeprecatedAlias, add_checkpoint, add_data, add_device, add_fp32,
                            add_inception, add_no_progress, finite_float, inception_path, positive_int, require_data)
from ditlab.tasks.base import SampleInputs, refuse_inputs


def condition_images(data: str, image_size: int, num: int, flag: str = "--data", progress: bool = True):
    """``num`` high-resolution images of ``data`` whose downsampled copies are the conditions: a seeded
    subset spread over the whole set (all classes), the one `ditlab psnr` pairs the samples with."""
    from ditlab.data import evaluation_subset, load_image_data

    images = load_image_data(data, image_size, progress=progress).images
    if len(images) < num:
        raise ValueError(f"{flag} {data} holds {len(images)} images, fewer than the {num} asked for")
    return images[evaluation_subset(len(images), num)]


def sample_conditions(run, inputs: SampleInputs, num: int, progress: bool = True) -> dict:
    refuse_inputs("superres", inputs, ("data",))
    if run.cfg.task.cond_mode == "dummy":
        if inputs.data is not None:
            raise ValueError("--data does not apply to this run: task.cond_mode=dummy generates without a condition")
        return {}
    if inputs.data is None:
        raise ValueError("this run is a super-resolution model: pass --data DATASET (high-resolution images "
                         "whose downsampled copies are the inputs)")
    return {"images": condition_images(inputs.data, run.info["image_size"], num, progress=progress)}


def cmd_psnr(args) -> int:
    import numpy as np
    import torch

    from ditlab.eval.psnr import sr_psnr_report
    from ditlab.samples_meta import read_meta

    data = require_data(args, "the data set the samples were conditioned on")
    meta = read_meta(args.samples)
    kind = meta.get("task")
    if kind is not None and kind not in ("superres", "lift") or (kind == "lift" and meta.get("path") != "lo-oracle"):
        raise ValueError(f"{args.samples} holds samples of a task.kind={kind} run"
                         f"{' (path ' + str(meta.get('path')) + ')' if kind == 'lift' else ''}: PSNR needs "
                         "conditional samples (superres, or lift with --path lo-oracle)")
    factor = args.factor or meta.get("factor")
    if factor is None:
        raise ValueError(f"{args.samples} carries no metadata (not written by `ditlab sample`): pass --factor")
    if args.factor and meta.get("factor") and args.factor != meta["factor"]:
        raise ValueError(f"--factor {args.factor} disagrees with the samples' factor {meta['factor']}")
    if meta.get("data") and Path(meta["data"]).name != Path(data).name:
        print(f"ditlab: warning: the samples were conditioned on {meta['data']}, not on --data {data}",
              file=__import__("sys").stderr)
    with np.load(args.samples) as z:
        key = "images" if "images" in z.files else "arr_0"
        samples = torch.from_numpy(z[key]).permute(0, 3, 1, 2)
    # The originals that `ditlab sample --data` took for these samples, in the same order.
    originals = condition_images(data, samples.shape[-1], len(samples), progress=not args.no_progress)
    report = sr_psnr_report(samples, originals, int(factor))
    report.update(samples=args.samples, data=data)
    print(json.dumps(report))
    return 0


def cmd_diagnose_collapse(args) -> int:
    import torch

    from ditlab.devices import resolve_device
    from ditlab.generation import sampling_autocast
    from ditlab.runs import load_run
    from ditlab.tasks.superres.diagnose import collapse_sweep

    data = require_data(args, "high-resolution images whose downsampled copies are the conditions")
    device = resolve_device(args.device)
    run = load_run(args.run_dir, device=device, kind="superres", command="`ditlab diagnose collapse`",
                   checkpoint=args.checkpoint, which=args.weights)
    bad = [w for w in args.cond_scale if w < 0]
    if bad:
        raise ValueError(f"--cond-scale must be >= 0, got {bad[0]:g}")
    if any(w != 1.0 for w in args.cond_scale) and not run.task.has_cond_pathway:
        raise ValueError("--cond-scale: this run has no condition pathway to scale (task.cond_mode=dummy)")
    originals = condition_images(data, run.info["image_size"], args.conditions, progress=not args.no_progress)
    features = None
    net_path = inception_path(args)
    if net_path:
        from ditlab.eval import extract_features, load_inception

        net = load_inception(net_path, device)
        features = lambda imgs: torch.from_numpy(extract_features(imgs, net, device, progress=False))  # noqa: E731
    out = Path(args.out or Path(args.run_dir) / "diagnose")
    out.mkdir(parents=True, exist_ok=True)
    report = collapse_sweep(run, originals, args.num_seeds, args.cfg, args.cond_noise, out, sampler=args.sampler,
                            steps=args.steps, seed=args.seed, device=device, autocast_dtype=sampling_autocast(device, args.fp32),
                            features=features, threshold=args.threshold, cond_scales=args.cond_scale)
    print(json.dumps(report["verdict"]))
    return 0


def add_cli(sub) -> None:
    ps = sub.add_parser("psnr", help="PSNR of super-resolution samples against their originals (JSON)")
    ps.add_argument("samples", help="samples .npz from `ditlab sample RUN --data DATASET` (sample i <-> the i-th image "
                                    "of the seeded subset that command took: ditlab.data.evaluation_subset)")
    add_data(ps, "the data set the samples were conditioned on", old=("--ref",))
    ps.add_argument("--factor", type=positive_int, default=None,
                    help="downsampling factor (default: the one recorded in the samples file)")
    add_no_progress(ps)
    ps.set_defaults(func=cmd_psnr)

    d = sub.add_parser("diagnose", help="diagnostics of trained runs")
    dsub = d.add_subparsers(dest="diagnose_command", required=True)
    dc = dsub.add_parser("collapse", help="across-seed vs across-condition spread (posterior collapse)")
    dc.add_argument("run_dir", help="a run directory (train.run_dir of a ditlab train run)")
    add_data(dc, "high-resolution images whose downsampled copies are the conditions", old=("--cond",))
    dc.add_argument("--conditions", type=positive_int, default=8, help="M conditions (grid rows)")
    dc.add_argument("--num-seeds", type=positive_int, default=8, help="K noise draws per condition (grid columns)")
    dc.add_argument("--seeds", dest="num_seeds", type=positive_int, action=DeprecatedAlias, new="--num-seeds",
                    help=argparse.SUPPRESS)
    dc.add_argument("--seed", type=int, default=0, help="seed of the noise draws")
    dc.add_argument("--cfg", type=finite_float, nargs="+", default=[1.0, 2.0, 4.0], help="CFG scales to sweep")
    dc.add_argument("--cond-noise", type=finite_float, nargs="+", default=[0.0],
                    help="condition noise levels to sweep (task.cond_noise_sample)")
    dc.add_argument("--cond-scale", type=finite_float, nargs="+", default=[1.0], metavar="W",
                    help="condition strengths to sweep (as `ditlab sample --cond-scale`, e.g. 1 0.8 0.5)")
    dc.add_argument("--sampler", choices=SAMPLER_CHOICES, default="heun", help="the sampler of every setting")
    dc.add_argument("--steps", type=positive_int, default=25, help="sampler steps")
    dc.add_argument("--threshold", type=finite_float, default=0.1,
                    help="collapsed when the across-seed spread is below this fraction of the residual energy")
    add_checkpoint(dc)
    add_inception(dc)
    add_device(dc)
    add_fp32(dc)
    dc.add_argument("--out", default=None, help="output folder (default RUN/diagnose)")
    add_no_progress(dc)
    dc.set_defaults(func=cmd_diagnose_collapse)

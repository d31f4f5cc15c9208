"""``ditlab ema RUN --sigma-rel S [--sigma-rel S2 ...] [--upto STEP]``: post-hoc EMA reconstruction.

Reads the power-EMA snapshots a run wrote with ``ema.posthoc_sigma_rels`` (RUN/ema_snapshots/), solves
EDM2's least-squares problem for each requested sigma_rel at the newest snapshot step (up to STEP) and
writes RUN/checkpoints/posthoc_sr0.070 (``..._at_0000STEP`` with --upto): a checkpoint of EMA weights
only, for ``ditlab sample RUN --checkpoint posthoc_sr0.070`` and everything else that takes
--checkpoint. One line per sigma_rel on stdout with the profile's relative fit error, and one with the width of
the run's own EMA at that step on the same scale (ema.sigma_rel, or for ema.decay
ditlab.train.ema.classic_sigma_rel).
docs/posthoc_ema.md; the mathematics in ditlab.train.posthoc_ema.
"""
from __future__ import annotations

import argparse


def _sigma_rel(text: str) -> float:
    from ditlab.cliargs import finite_float

    value = finite_float(text)
    if not 0 < value <= 12 ** -0.5:
        raise argparse.ArgumentTypeError(f"must lie in (0, {12 ** -0.5:.4f}] (1/sqrt(12): the uniform average), "
                                         f"got {value}")
    return value


def cmd_ema(args) -> int:
    from pathlib import Path

    from ditlab.config import read_saved_config
    from ditlab.train.ema import classic_sigma_rel
    from ditlab.train.posthoc_ema import FIT_WARNING, find_snapshots, reconstruct, sigma_rel_tag

    run_dir = Path(args.run_dir).expanduser()
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir / 'config.yaml'} not found: {run_dir} is not a ditlab run directory")
    tags = [sigma_rel_tag(s) for s in args.sigma_rel]
    if len(set(tags)) != len(tags):
        raise ValueError(f"--sigma-rel values must differ in their first 3 decimals (the folder name), got "
                         f"{args.sigma_rel}")
    snaps = find_snapshots(run_dir, args.upto)  # errors (missing, corrupt, none) before any solve
    widths = sorted({s.sigma_rel for s in snaps})
    step = None
    for r in reconstruct(run_dir, args.sigma_rel, upto=args.upto):
        step = r.step
        used = sum(c != 0 for c in r.coefficients)
        print(f"ditlab ema: sigma_rel {r.sigma_rel:g} (gamma {r.gamma:.3f}) at step {r.step}: fit error "
              f"{r.fit_error:.2e} (relative L2 of the EMA profile) from {used} of {len(snaps)} snapshots "
              f"(sigma_rel {', '.join(f'{w:g}' for w in widths)}); wrote {r.checkpoint}")
        if r.fit_error > FIT_WARNING:
            print(f"ditlab ema: warning: sigma_rel {r.sigma_rel:g} is poorly spanned by the snapshots' widths (fit "
                  f"error {r.fit_error:.1%}); its weights are an approximation of that EMA at best")
    # the run's own EMA on the same scale, so that a post-hoc width can be compared with what sampling used
    ema = read_saved_config(run_dir / "config.yaml").ema
    if ema.sigma_rel:
        print(f"ditlab ema: the run's own EMA is the power EMA of sigma_rel {ema.sigma_rel:g} (ema.sigma_rel)")
    else:
        print(f"ditlab ema: the run's own EMA (ema.decay {ema.decay:g}{', its warm-up ramp' if ema.warmup else ''}) "
              f"at step {step} is sigma_rel {classic_sigma_rel(ema.decay, step, ema.warmup, ema.every):.3f} wide")
    return 0


def add_ema_parser(subparsers) -> argparse.ArgumentParser:
    from ditlab.cliargs import positive_int

    e = subparsers.add_parser("ema", help="post-hoc EMA: rebuild the EMA of any sigma_rel from a run's power-EMA "
                                          "snapshots (ema.posthoc_sigma_rels) as RUN/checkpoints/posthoc_srX")
    e.add_argument("run_dir", help="a run directory trained with ema.posthoc_sigma_rels")
    e.add_argument("--sigma-rel", type=_sigma_rel, action="append", required=True, metavar="S",
                   help="relative EMA width to reconstruct, e.g. 0.07 (repeatable; EDM2's optimum often lies "
                        "in 0.05..0.15)")
    e.add_argument("--upto", type=positive_int, default=None, metavar="STEP",
                   help="use only the snapshots of steps <= STEP and reconstruct at the newest of them (default: "
                        "all, the run's newest snapshot step); the folder is then posthoc_srX_at_STEP")
    e.set_defaults(func=cmd_ema)
    return e

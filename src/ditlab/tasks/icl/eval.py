"""`ditlab icl eval`: a trained in-context regression run against the exact Bayesian answer.

Held-out prompts are drawn from the run's own prior (its icl.d, n_points, tau, sigma, at the full
dimension) from a fixed seed. For every number of context points k = 0..N-1 (query k + 1 of each
prompt) we report, in network units (squared error / (tau^2 d)):

- the error of the predictive mean (the mean of S samples for a diffusion run, the output of a
  deterministic run) next to the Bayes posterior mean, least squares, 3-NN, averaging and an
  optional deterministic transformer run, with bootstrap bands over prompts;
- for a diffusion run, its calibration against the exact posterior predictive (coverage, PIT, CRPS,
  log variance ratio; :mod:`ditlab.tasks.icl.metrics`);
- a pass / fail verdict for the targets of issue 6.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch

from ditlab.tasks.icl import bayes as bayes
from ditlab.tasks.icl import metrics as metrics
from ditlab.generation import autocast_context, generate, precision_name
from ditlab.tasks.base import SampleSettings
from ditlab.tasks.icl.task import ICLDiffusionTask, ICLRegressionTask
from ditlab.tasks.icl.data import draw_prompts, y_scale

# Targets of issue 6.
ERROR_RATIO_TOL = 0.05  # noisy: |error / Bayes error - 1| at every k
COVERAGE_TOL = 0.03  # noisy: |coverage - nominal| at every k and level
NOISELESS_TOL = 0.05  # noiseless: |error - (1 - k/d)+| at every k


@dataclass
class EvalSettings:
    prompts: int = 1000
    samples: int = 100
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    seed: int = 20261122
    batch_size: int = 8192  # sequences per network call (prompts x samples)
    bootstrap: int = 1000


@dataclass
class EvalPrompts:
    x: torch.Tensor  # (P, N, d) float32
    y: torch.Tensor  # (P, N) float32, network units
    tau: float  # prior std of w in network units: 1 / sqrt(d)
    sigma: float  # noise std in network units


def held_out_prompts(icl, d: int, n_points: int, num: int, seed: int) -> EvalPrompts:
    """Prompts at the full dimension, scaled to network units; a fixed seed, apart from training."""
    g = torch.Generator().manual_seed(seed)
    p = draw_prompts(num, n_points, d, icl.tau, icl.sigma, generator=g)
    scale = y_scale(icl.tau, d)
    return EvalPrompts(p.x, p.y * scale, icl.tau * scale, icl.sigma * scale)


@torch.no_grad()
def diffusion_samples(task: ICLDiffusionTask, prompts: EvalPrompts, s: EvalSettings, device,
                      progress: bool = False, autocast_dtype=None) -> np.ndarray:
    """(P, S, N) samples of every query: draw s of prompt p is sample index p * S + s of the one
    generation loop (noise per sample index, so the draws do not depend on the batching), generated
    in chunks of whole prompts."""
    settings = SampleSettings(sampler=s.sampler, steps=s.steps, eta=s.eta)
    per_chunk = max(1, s.batch_size // s.samples)
    P, S = prompts.x.shape[0], s.samples
    from tqdm import tqdm

    out = []
    for p0 in tqdm(range(0, P, per_chunk), unit="chunk", desc="sampling", disable=not progress):
        rows = slice(p0, p0 + per_chunk)
        cond = {"x": prompts.x[rows].repeat_interleave(S, dim=0), "y": prompts.y[rows].repeat_interleave(S, dim=0)}
        n = len(cond["x"])
        draws = generate(task, task.model, n, s.seed, settings, cond, batch_size=n, start=p0 * S, device=device,
                         autocast_dtype=autocast_dtype)
        out.append(draws["y_sampled"].reshape(n // S, S, -1).double().numpy())
    return np.concatenate(out)


@torch.no_grad()
def deterministic_predictions(task: ICLRegressionTask, prompts: EvalPrompts, s: EvalSettings, device,
                              autocast_dtype=None) -> np.ndarray:
    out = []
    for start in range(0, prompts.x.shape[0], s.batch_size):
        x = prompts.x[start : start + s.batch_size].to(device)
        y = prompts.y[start : start + s.batch_size].to(device)
        with autocast_context(device, autocast_dtype):
            pred = task.predict(task.model, x, y)
        out.append(pred.cpu().double().numpy())
    return np.concatenate(out)


def _band(values: np.ndarray, rng, s: EvalSettings) -> dict:
    lo, hi = metrics.bootstrap_mean_band(values, rng, s.bootstrap)
    return {"mean": values.mean(0).tolist(), "lo": lo.tolist(), "hi": hi.tolist()}


def _clean(x):
    """JSON-safe: NaN -> None, numpy -> lists / floats."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_clean(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def verdict(noisy: bool, errors: dict, bayes_error: np.ndarray, coverage: Optional[dict], d: int) -> dict:
    """Pass / fail of issue 6's targets for the model's predictive mean (and its coverage)."""
    model = np.asarray(errors["model"]["mean"])
    if noisy:
        ratio = model / bayes_error
        out = {"error_within_5pct_of_bayes": bool(np.all(np.abs(ratio - 1) <= ERROR_RATIO_TOL)),
               "worst_error_ratio": float(ratio[np.argmax(np.abs(ratio - 1))])}
        if coverage is not None:
            dev = np.array([np.asarray(coverage[level]) - level for level in metrics.LEVELS])
            out["coverage_within_3_points"] = bool(np.all(np.abs(dev) <= COVERAGE_TOL))
            out["worst_coverage_deviation"] = float(dev.flat[np.nanargmax(np.abs(dev))])
    else:
        # The target is the model's *expected* error against (1 - k/d)+, the Bayes predictor's expected
        # error. On a finite prompt set both errors carry the same prompt-to-prompt noise (at k = 0 the
        # Bayes error of 500 prompts is off (1 - k/d)+ by several hundredths by itself), so the paired
        # (control-variate) estimate model - Bayes(these prompts) + (1 - k/d)+ is the one tested; the
        # raw deviation is reported beside it.
        curve = bayes.noiseless_error_curve(d, len(model))
        dev = model - bayes_error
        raw = model - curve
        out = {"error_follows_1_minus_k_over_d": bool(np.all(np.abs(dev) <= NOISELESS_TOL)),
               "worst_error_deviation": float(dev[np.argmax(np.abs(dev))]),
               "worst_raw_deviation_from_1_minus_k_over_d": float(raw[np.argmax(np.abs(raw))])}
    out["pass"] = all(v for k, v in out.items() if isinstance(v, bool))
    return out


def evaluate(run, s: EvalSettings, baseline=None, device="cpu", progress: bool = False, autocast_dtype=None) -> dict:
    """Everything `ditlab icl eval` reports, as one JSON-ready dict (per-k lists, verdict, settings);
    ``progress``: a bar over the sampling; ``autocast_dtype``: the networks' precision (None: fp32; `ditlab icl
    eval` passes bf16 on a GPU unless --fp32, the precision of `ditlab sample` and of the in-training evaluation)."""
    icl, d, n = run.cfg.icl, run.info["d"], run.info["n_points"]
    if baseline is not None:
        b = baseline.cfg.icl
        if (baseline.info["d"], baseline.info["n_points"], b.tau, b.sigma) != (d, n, icl.tau, icl.sigma):
            raise ValueError("--baseline must be trained on the same problem (icl.d, icl.n_points, icl.tau, "
                             f"icl.sigma): {(baseline.info['d'], baseline.info['n_points'], b.tau, b.sigma)} vs "
                             f"{(d, n, icl.tau, icl.sigma)}")
    prompts = held_out_prompts(icl, d, n, s.prompts, s.seed)
    x, y = prompts.x.double().numpy(), prompts.y.double().numpy()
    mean, var = bayes.posterior_predictive(x, y, prompts.tau, prompts.sigma)
    predictions = {"bayes": mean, "least_squares": bayes.least_squares(x, y),
                   "3nn": bayes.nearest_neighbours(x, y, 3), "averaging": bayes.averaging(x, y)}
    samples = None
    if isinstance(run.task, ICLDiffusionTask):
        samples = diffusion_samples(run.task, prompts, s, device, progress, autocast_dtype)
        predictions["model"] = samples.mean(1)
    else:
        predictions["model"] = deterministic_predictions(run.task, prompts, s, device, autocast_dtype)
    if baseline is not None:
        predictions["transformer_mse"] = deterministic_predictions(baseline.task, prompts, s, device, autocast_dtype)

    rng = np.random.default_rng(s.seed)
    sq = {name: (p - y) ** 2 for name, p in predictions.items()}
    errors = {name: _band(v, rng, s) for name, v in sq.items()}
    ratio_lo, ratio_hi = metrics.bootstrap_ratio_band(sq["model"], sq["bayes"], rng, s.bootstrap)
    bayes_error = sq["bayes"].mean(0)
    # Noiseless, k >= d: the Bayes error is 0 up to rounding and a ratio means nothing.
    no_ratio = bayes_error < 1e-9
    ratio = np.where(no_ratio, np.nan, sq["model"].mean(0) / np.where(no_ratio, 1.0, bayes_error))
    ratio_lo, ratio_hi = np.where(no_ratio, np.nan, ratio_lo), np.where(no_ratio, np.nan, ratio_hi)
    report = {"run": str(run.checkpoint), "d": d, "n_points": n, "tau": icl.tau, "sigma": icl.sigma,
              "noisy": icl.sigma > 0, "settings": asdict(s),
              "precision": precision_name(autocast_dtype), "k": list(range(n)), "errors": errors,
              "error_ratio_to_bayes": {"mean": ratio.tolist(),
                                       "lo": ratio_lo.tolist(), "hi": ratio_hi.tolist()},
              "exact_predictive_variance": var.mean(0).tolist()}
    coverage = None
    if samples is not None:
        # The mean of S samples is off the sampler's own mean by var / S on average; shown, not judged on.
        report["model_error_minus_mean_variance_over_S"] = (
            sq["model"].mean(0) - samples.var(1, ddof=1).mean(0) / s.samples).tolist()
        coverage = metrics.exact_coverage(samples, mean, var)
        u = metrics.exact_pit(samples, mean, var)
        report["calibration"] = {
            "coverage_exact": {str(k): v.tolist() for k, v in coverage.items()},
            "coverage_empirical": {str(k): v.tolist() for k, v in metrics.empirical_coverage(samples, y).items()},
            "pit_histogram": metrics.pit_histogram(u).tolist() if u.size else None,
            "crps_model": metrics.crps_ensemble(samples, y).mean(0).tolist(),
            "crps_exact": metrics.crps_gaussian(mean, var, y).mean(0).tolist(),
            "log_variance_ratio": metrics.log_variance_ratio(samples, var).tolist(),
        }
        if icl.sigma == 0:
            coverage = None  # noiseless: the targets are on the error only (the predictive collapses at k >= d)
    report["verdict"] = verdict(icl.sigma > 0, errors, bayes_error, coverage, d)
    return _clean(report)

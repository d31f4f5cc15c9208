"""The rates a study has measured so far, from its score files: what ``ditlab ablate --plan`` estimates the device
time left with, and what the runner judges a unit's length by before it has timed one itself."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from ditlab.experiments.study_files import study_files


def measured_rates(out: Path) -> dict | None:
    """The median set-up seconds of a training (wall minus timed), seconds per scored sample (sampling and
    FID) and training steps per timed second (the study's median, ``steps_per_s``, and each variant's,
    ``variant_steps_per_s``: FID during training is every so many steps), from every score file under ``out``
    that carries its timings; None before any does."""
    setup, per_sample, trainings = [], [], set()
    rate, by_variant = [], {}
    for path in study_files(out, "scores/*.json"):
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a file being written by a running study: the rates do without it
        if not {"train_wall_seconds", "fid_seconds", "sample_seconds", "num_samples"} <= r.keys():
            continue
        if r.get("carried_from"):  # a copy of an earlier stage's score (ditlab.experiments.stages.carry_scores)
            continue
        key = (path.parent.parent, r.get("variant"), r.get("seed"))  # a training once, whatever its scores
        if key not in trainings and r["train_wall_seconds"] > 0:
            trainings.add(key)
            setup.append(max(0.0, r["train_wall_seconds"] - r.get("train_seconds", 0.0)))
            if r.get("train_seconds", 0.0) > 0 and r.get("train_steps"):
                rate.append(r["train_steps"] / r["train_seconds"])
                by_variant.setdefault(r.get("variant"), []).append(rate[-1])
        per_sample.append((r["sample_seconds"] + r["fid_seconds"]) / max(1, r["num_samples"]))
    if not per_sample:
        return None
    return {"setup_s": statistics.median(setup) if setup else 0.0, "per_sample_s": statistics.median(per_sample),
            "scores": len(per_sample), "steps_per_s": statistics.median(rate) if rate else 0.0,
            "variant_steps_per_s": {v: statistics.median(r) for v, r in by_variant.items()}}


def training_eval_s(rates: dict, variant: str, seconds: float, steps: int, eval_every: int, eval_num: int) -> float:
    """Device seconds of the FID evaluations during ``seconds`` of timed training (train.eval_every: one every
    ``eval_every`` steps, ``eval_num`` samples each, off the training clock), at the variant's measured steps per
    second (the study's median where the variant has none yet), at most ``steps`` steps; 0 without
    evaluations or a measured rate."""
    if not eval_every or seconds <= 0:
        return 0.0
    per_s = rates.get("variant_steps_per_s", {}).get(variant) or rates.get("steps_per_s", 0.0)
    return int(min(steps, per_s * seconds) // eval_every) * eval_num * rates["per_sample_s"]

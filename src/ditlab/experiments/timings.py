"""The rates a study has measured so far, from its score files: what ``ditlab ablate --plan`` estimates the device
time left with, and what the runner judges a unit's length by before it has timed one itself."""
from __future__ import annotations

import json
import statistics
from pathlib import Path


def measured_rates(out: Path) -> dict | None:
    """The median set-up seconds of a training (wall minus timed) and seconds per scored sample (sampling and
    FID), from every score file under ``out`` that carries its timings; None before any does."""
    setup, per_sample, trainings = [], [], set()
    for path in sorted(out.glob("**/scores/*.json")):
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
        per_sample.append((r["sample_seconds"] + r["fid_seconds"]) / max(1, r["num_samples"]))
    if not per_sample:
        return None
    return {"setup_s": statistics.median(setup) if setup else 0.0, "per_sample_s": statistics.median(per_sample),
            "scores": len(per_sample)}

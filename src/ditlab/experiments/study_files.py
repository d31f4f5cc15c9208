"""Where a study's files are: OUT/scores and OUT/runs for a plain ablation, OUT/STAGE/scores and OUT/STAGE/runs
for each stage of a staged one. Finding them by these two levels, not by a recursive walk: a walk descends into
the runs' checkpoint folders, which a training on another worker renames and removes while it walks (a
FileNotFoundError from the scan, seen with `--devices cpu,cpu`)."""
from __future__ import annotations

from pathlib import Path


def study_files(out: Path, pattern: str) -> list[Path]:
    """The files matching ``pattern`` (relative to a study folder, e.g. "scores/*.json" or "runs/*/model.json")
    in ``out`` and in each of its stage folders, sorted."""
    out = Path(out)
    return sorted([*out.glob(pattern), *out.glob(f"*/{pattern}")])

"""The score files of an ablation folder (OUT/scores/*.json, one per variant, training seed, path and eval), read
in the file's order and grouped by what they score: the records the results tables, the paired comparisons and
the plots are made from."""
from __future__ import annotations

import json
from pathlib import Path


def read_scores(out: Path, spec) -> list[dict]:
    """Score records in the order of the ablation file (variants, then paths, then seeds)."""
    records = [json.loads(p.read_text()) for p in sorted((out / "scores").glob("*.json"))]
    for r in records:
        r.setdefault("eval", "")  # score files of before named evals
    order = {(v.name, p, e): (i, j) for i, v in enumerate(spec.variants) for j, (p, e, _) in enumerate(spec.scores_of(v))}
    known = [r for r in records if score_key(r) in order]
    curve_keys = {(v.name, "default", spec.curve_eval(v)) for v in spec.variants}
    for r in known:
        if score_key(r) not in curve_keys:  # the curve sampled another eval's settings: not this score's times
            r.pop("time_to_fid", None)  # (score files of before 2026-12-07 carry them in every score of a run)
    return sorted(known, key=lambda r: (*order[score_key(r)], r["seed"]))


def score_key(r: dict) -> tuple[str, str, str]:
    """What a score record scores: (variant, path, eval); its training seed apart."""
    return r["variant"], r["path"], r.get("eval", "")


def group_by_pair(records: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """[(variant, "path" or "path / eval", records of its seeds)] in the records' order."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        groups.setdefault(score_key(r), []).append(r)
    return [(v, f"{p} / {e}" if e else p, rs) for (v, p, e), rs in groups.items()]

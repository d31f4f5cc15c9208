"""The ablation's tables and plot, from the per-(variant, seed, path) score files.

results.csv has one row per score; results.md a table of FID per (variant, path), the mean over
training seeds with each seed's value when there are several; results.png a bar chart of it.
"""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

CSV_COLUMNS = ("variant", "seed", "path", "fid", "nfe", "sampler", "steps", "num_samples", "sample_seed",
               "train_steps", "train_images", "train_seconds", "params", "gflops_per_image", "task", "note")


def read_scores(out: Path, spec) -> list[dict]:
    """Score records in the order of the ablation file (variants, then paths, then seeds)."""
    records = [json.loads(p.read_text()) for p in sorted((out / "scores").glob("*.json"))]
    order = {(v.name, p): (i, j) for i, v in enumerate(spec.variants) for j, p in enumerate(v.paths)}
    known = [r for r in records if (r["variant"], r["path"]) in order]
    return sorted(known, key=lambda r: (*order[(r["variant"], r["path"])], r["seed"]))


def group_by_pair(records: list[dict]) -> list[tuple[str, str, list[dict]]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["variant"], r["path"]), []).append(r)
    return [(v, p, rs) for (v, p), rs in groups.items()]


def _fmt_fid(rs: list[dict]) -> str:
    fids = [r["fid"] for r in rs]
    if len(fids) == 1:
        return f"{fids[0]:.2f}"
    return f"{statistics.mean(fids):.2f} ± {statistics.stdev(fids):.2f} ({', '.join(f'{f:.1f}' for f in fids)})"


def write_csv(path: Path, records: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(records)
    return path


def write_markdown(path: Path, spec, records: list[dict], scorer: dict) -> Path:
    s, b = spec.sample, spec.budget
    lines = [
        f"# Ablation {spec.source.name}",
        "",
        f"Budget per run: {'%g s of training' % b.time_limit if b.time_limit else ''}"
        f"{' or ' if b.time_limit else ''}{b.steps} steps; training seeds {sorted({r['seed'] for r in records}) or spec.seeds}. Samples: {s.num} per pair, "
        f"{s.sampler} {s.steps} steps, CFG {s.cfg_scale}, sample seed {s.seed}. FID-{s.num} against "
        f"{scorer.get('ref', '?')} ({scorer.get('n_ref', '?')} images, {scorer.get('inception', '?')}).",
        "",
        "| variant | path | FID | NFE | train steps | train images | params (M) | GFLOPs/img | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, p, rs in group_by_pair(records):
        r = rs[0]
        lines.append(f"| {variant} | {p} | {_fmt_fid(rs)} | {r['nfe']} | {r['train_steps']} | {r['train_images']:,} "
                     f"| {r['params'] / 1e6:.2f} | {r['gflops_per_image']:.2f} | {r.get('note', '')} |")
    missing = [(v.name, p) for v in spec.variants for p in v.paths
               if not any(r["variant"] == v.name and r["path"] == p for r in records)]
    if missing:
        lines += ["", f"Not scored yet: {', '.join(f'{v}/{p}' for v, p in missing)}."]
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_results(path: Path, records: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_by_pair(records)
    labels = [f"{v} / {p}" for v, p, _ in groups]
    means = [statistics.mean(r["fid"] for r in rs) for _, _, rs in groups]
    errs = [statistics.stdev([r["fid"] for r in rs]) if len(rs) > 1 else 0.0 for _, _, rs in groups]
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(labels), 1) + 1.2), constrained_layout=True)
    ax.barh(range(len(labels)), means, xerr=errs, color="tab:blue")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("FID (lower is better)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(out: Path, spec, scorer: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    records = read_scores(out, spec)
    paths = [write_csv(out / "results.csv", records), write_markdown(out / "results.md", spec, records, scorer)]
    if records:
        paths.append(plot_results(out / "results.png", records))
    return paths

"""The ablation's plots: results.png (FID per variant and path / eval), results_curves.png (FID during training
against training time) and the paired differences (results_leave_one_out.png, results_against_baseline.png,
results_evals.png)."""
from __future__ import annotations

import statistics
from pathlib import Path

from ditlab.experiments.pairs import LeaveOneOut
from ditlab.experiments.score_records import group_by_pair


def plot_curves(path: Path, records: list[dict], thresholds=()) -> Path:
    """FID during training against training seconds, one line per (variant, seed), one colour per variant, and a
    dotted line at each time-to-FID threshold (where a curve crosses one is the time the table gives)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    colours: dict[str, str] = {}
    seen = set()
    for r in records:
        key = (r["variant"], r["seed"])
        if not r.get("eval_curve") or key in seen:  # the curve is the run's: once per run, not per path/eval
            continue
        seen.add(key)
        first = r["variant"] not in colours  # one legend entry per variant
        colour = colours.setdefault(r["variant"], f"C{len(colours) % 10}")
        secs, fids = [c[0] for c in r["eval_curve"]], [c[2] for c in r["eval_curve"]]
        ax.plot(secs, fids, marker="o", ms=3, color=colour, label=r["variant"] if first else None)
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    for t in thresholds:
        if low <= t <= high:
            ax.axhline(t, color="grey", lw=0.8, ls=":")
            ax.annotate(f"FID {t:g}", (1.0, t), xycoords=("axes fraction", "data"), xytext=(-4, 2),
                        textcoords="offset points", ha="right", fontsize=7, color="grey")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 6, 8, 10 rather than 6x10^0 on a narrow log axis
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel("FID during training")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_results(path: Path, records: list[dict]) -> Path:
    """A bar per (variant, path / eval): the mean FID over the training seeds, their standard deviation as the
    error bar and each seed's value as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_by_pair(records)
    labels = [f"{v} / {p}" for v, p, _ in groups]
    means = [statistics.mean(r["fid"] for r in rs) for _, _, rs in groups]
    errs = [statistics.stdev([r["fid"] for r in rs]) if len(rs) > 1 else 0.0 for _, _, rs in groups]
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(labels), 1) + 1.2), constrained_layout=True)
    ax.barh(range(len(labels)), means, xerr=errs, color="tab:blue")
    # each training seed's own value: with two seeds a standard deviation says little, the two points more
    seeds = [(r["fid"], i) for i, (_, _, rs) in enumerate(groups) if len(rs) > 1 for r in rs]
    if seeds:
        ax.scatter(*zip(*seeds), color="black", s=12, zorder=3, label="each training seed")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("FID (lower is better)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# plot_paired's kinds: (a row's label, the x axis's label, the band's label)
_PAIR_PLOTS = {
    "leave_one_out": (lambda p: f"without {p.left_out} / {p.label}",
                      "FID without the change - FID with it (positive: the change helps)",
                      "95% interval (Student's t, pooled seed noise)"),
    "baseline": (lambda p: f"{p.left_out} / {p.label}",
                 "baseline's FID - the variant's (positive: the variant is better)",
                 "95% interval (Student's t, pooled seed noise)"),
    "evals": (lambda p: f"{p.left_out} / {p.label}",
              "reference eval's FID - the eval's (positive: the eval is better)",
              "95% interval (Student's t, pooled noise of a paired difference)"),
}


def plot_paired(path: Path, pairs: list[LeaveOneOut], kind: str = "leave_one_out") -> Path:
    """A row per pair: each training seed's paired difference as a point, their mean as a bar, zero as a line, and
    as a grey band the mean's 95% interval around zero (the pair's ci95: its standard error times Student's t on
    the pooled noise's degrees of freedom, where known): a mean inside the band is no more than noise. ``kind``:
    leave_one_out (leave_one_out_pairs), baseline (baseline_pairs) or evals (eval_pairs), which label the rows and
    axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row_label, x_label, band_label = _PAIR_PLOTS[kind]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(pairs) + 1.8), constrained_layout=True)
    banded = False
    for row, pair in enumerate(pairs):
        band = pair.ci95
        if band:
            ax.barh(row, 2 * band, left=-band, height=0.7, color="0.88", zorder=1,
                    label=None if banded else band_label)
            banded = True
        ax.barh(row, statistics.mean(pair.diffs), height=0.35, color="tab:blue", zorder=2,
                label="mean" if row == 0 else None)
        ax.scatter(pair.diffs, [row] * len(pair.diffs), color="black", s=14, zorder=3,
                   label="each training seed" if row == 0 else None)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(range(len(pairs)), [row_label(p) for p in pairs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(x_label)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Files of `ditlab icl eval`: summary.json, summary.md and PNG plots of error and coverage vs k."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ditlab.tasks.icl.bayes import noiseless_error_curve
from ditlab.tasks.icl.metrics import LEVELS

LABELS = {"model": "this run", "bayes": "Bayes (exact)", "least_squares": "least squares", "3nn": "3-NN",
          "averaging": "averaging", "transformer_mse": "transformer (MSE)"}


def _fmt(v, digits=3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def markdown_summary(r: dict) -> str:
    names = list(r["errors"])
    lines = [f"# In-context regression eval: d = {r['d']}, {r['n_points']} points, tau = {r['tau']}, "
             f"sigma = {r['sigma']}", "",
             f"Run `{r['run']}`; {r['settings']['prompts']} prompts, {r['settings']['samples']} samples each, "
             f"{r['settings']['sampler']} {r['settings']['steps']} steps, {r.get('precision', 'fp32')}. Errors are squared errors / (tau^2 d).",
             "", "## Verdict", ""]
    lines += [f"- {k}: {v}" for k, v in r["verdict"].items()]
    if r.get("calibration"):
        lines += ["", "Coverage averaged over prompts is met by any forecaster that is right on average over the "
                  "prior, the prior predictive itself included; it means something only next to a small error "
                  "ratio, a flat PIT histogram and a log variance ratio near 0."]
    lines += ["", "## Error of the predictive mean vs k", "",
              "| k | " + " | ".join(LABELS.get(n, n) for n in names) + " | run / Bayes (95% band) |",
              "|---|" + "---|" * (len(names) + 1)]
    ratio = r["error_ratio_to_bayes"]
    for k in r["k"]:
        cells = [_fmt(r["errors"][n]["mean"][k]) for n in names]
        lines.append(f"| {k} | " + " | ".join(cells) +
                     f" | {_fmt(ratio['mean'][k])} ({_fmt(ratio['lo'][k])}–{_fmt(ratio['hi'][k])}) |")
    cal = r.get("calibration")
    if cal:
        lines += ["", "## Calibration against the exact posterior predictive", "",
                  "Coverage: exact probability mass of the run's central interval (empirical fraction of "
                  "targets inside in brackets).", "",
                  "| k | " + " | ".join(f"{int(100 * lv)}%" for lv in LEVELS) +
                  " | CRPS run | CRPS exact | log(var run / var exact) |",
                  "|---|" + "---|" * (len(LEVELS) + 3)]
        for k in r["k"]:
            cov = [f"{_fmt(cal['coverage_exact'][str(lv)][k])} ({_fmt(cal['coverage_empirical'][str(lv)][k], 2)})"
                   for lv in LEVELS]
            lines.append(f"| {k} | " + " | ".join(cov) + f" | {_fmt(cal['crps_model'][k])} | "
                         f"{_fmt(cal['crps_exact'][k])} | {_fmt(cal['log_variance_ratio'][k])} |")
        if cal["pit_histogram"]:
            lines += ["", "PIT of the run's samples under the exact predictive CDF (10 bins, 0.1 each if exact): "
                      + ", ".join(f"{v:.3f}" for v in cal["pit_histogram"])]
    return "\n".join(lines) + "\n"


def plot_errors(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = np.array(r["k"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    for name, e in r["errors"].items():
        style = dict(lw=2.2, color="C3") if name == "model" else dict(lw=1.2)
        if name == "bayes":
            style = dict(lw=1.5, color="k", ls="--")
        ax.plot(k, e["mean"], label=LABELS.get(name, name), **style)
        ax.fill_between(k, e["lo"], e["hi"], alpha=0.2, color=style.get("color"))
    if not r["noisy"]:
        ax.plot(k, noiseless_error_curve(r["d"], len(k)), ":", color="grey", label="(1 - k/d)+")
    ax.set_xlabel("k (context points)")
    ax.set_ylabel("squared error / d")
    ax.set_title(f"d = {r['d']}, sigma = {r['sigma']}")
    ax.set_ylim(0, min(2.0, max(max(e["mean"]) for e in r["errors"].values()) * 1.05))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_calibration(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cal = r["calibration"]
    k = np.array(r["k"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    for i, lv in enumerate(LEVELS):
        cov = np.array([np.nan if v is None else v for v in cal["coverage_exact"][str(lv)]])
        ax.plot(k, cov, "o-", ms=3, color=f"C{i}", label=f"{int(100 * lv)}%")
        ax.axhspan(lv - 0.03, lv + 0.03, color=f"C{i}", alpha=0.12)
    ax.set_xlabel("k (context points)")
    ax.set_ylabel("coverage (exact mass of the interval)")
    ax.set_title("interval coverage (bands: nominal ± 3 points)")
    ax.legend(fontsize=7)
    if cal["pit_histogram"]:
        h = np.array(cal["pit_histogram"])
        ax2.bar(np.arange(len(h)) / len(h), h * len(h), width=1 / len(h), align="edge", edgecolor="k")
        ax2.axhline(1.0, color="k", ls="--")
        ax2.set_xlabel("exact predictive CDF of the samples (PIT)")
        ax2.set_ylabel("density")
        ax2.set_title("PIT histogram (flat = exact)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(r: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "summary.json", "markdown": out / "summary.md", "errors": out / "error_vs_k.png"}
    files["json"].write_text(json.dumps(r, indent=1) + "\n")
    files["markdown"].write_text(markdown_summary(r))
    plot_errors(r, files["errors"])
    if r.get("calibration"):
        files["calibration"] = out / "coverage_vs_k.png"
        plot_calibration(r, files["calibration"])
    return files

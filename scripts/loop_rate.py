"""The training loop's own images/s, from a run folder's logs: the rate of each logging window (metrics.jsonl's
`images_per_s`, train.log_every steps each) and of the timed training as a whole (summary.json).

    PYTHONPATH=src python scripts/loop_rate.py RUN_DIR [RUN_DIR ...]

One JSON line per run: the windows' median, min and max, the mean of the first and of the last ten (a decline
over the run shows as last < first), and the timed rate (summary.json's `timed_images_per_s`; in older summaries
timed_steps x batch / timed_seconds) beside the windows' median (their difference is what start-up costs the
timed window). The first window holds compilation and the last is cut by the time limit: both are left out of
the windows' figures. scripts/bench_loop_gap.sh uses it for its `loop` row; BENCHMARKS.md ("Twenty-seventh
session") for the twenty-sixth session's headline runs.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from ditlab.report import read_metrics


def loop_rate(run_dir: Path) -> dict:
    try:
        rows = read_metrics(run_dir)
    except FileNotFoundError:
        raise SystemExit(f"loop_rate.py: {run_dir / 'metrics.jsonl'} does not exist (not a run folder, or the run "
                         "logged nothing)") from None
    summary_path = run_dir / "summary.json"
    rates = [r["images_per_s"] for r in rows if "images_per_s" in r][1:-1]
    out: dict = {"run": str(run_dir), "windows": len(rates)}
    if rates:
        out.update(median=round(statistics.median(rates), 1), min=round(min(rates), 1), max=round(max(rates), 1),
                   first10=round(statistics.mean(rates[:10]), 1), last10=round(statistics.mean(rates[-10:]), 1))
    if summary_path.exists():
        s = json.loads(summary_path.read_text())
        if s.get("timed_seconds"):
            # the trainer's own since 2026-12-07 (each segment's batch); older summaries: one batch size
            rate = s.get("timed_images_per_s") or s["timed_steps"] * s["batch_size"] / s["timed_seconds"]
            out["timed_images_per_s"] = round(rate, 1)
            out["timed_steps"], out["timed_seconds"] = s["timed_steps"], round(s["timed_seconds"], 2)
    return out


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python scripts/loop_rate.py RUN_DIR [RUN_DIR ...]")
    for a in args:
        print(json.dumps(loop_rate(Path(a))))


if __name__ == "__main__":
    main()

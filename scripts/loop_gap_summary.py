"""The summary of scripts/bench_loop_gap.sh's folder: each row's images/s and the GPU's SM clock and power while it ran.

    python scripts/loop_gap_summary.py OUT_DIR      # writes OUT_DIR/summary.json and prints it as one line

Reads phases.csv (`ROW start|end,TIMESTAMP`, local time), clocks.csv (nvidia-smi's `timestamp, clocks.sm,
power.draw, temperature.gpu` every 0.5 s, absent without a GPU), ROW.jsonl (a bench row's JSON line) and loop.json
(scripts/loop_rate.py of the loop row: its windows' median). The clock and power of a row are the medians over the
second half of its phase: past compilation and warm-up, where the timed steps are.
"""
from __future__ import annotations

import csv
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path

STAMP = "%Y/%m/%d %H:%M:%S.%f"  # nvidia-smi's timestamp, and the script's `date` format


def read_phases(path: Path) -> dict[str, dict[str, datetime]]:
    phases: dict[str, dict[str, datetime]] = {}
    with open(path) as f:
        for name, stamp in csv.reader(f):
            row, edge = name.rsplit(" ", 1)
            phases.setdefault(row, {})[edge] = datetime.strptime(stamp.strip(), STAMP)
    return phases


def read_clocks(path: Path) -> list[tuple[datetime, float, float]]:
    """(time, SM MHz, W) per sample; lines nvidia-smi could not fill ([N/A], a cut last line) are passed over."""
    if not path.exists():
        return []
    samples = []
    with open(path) as f:
        for rec in csv.reader(f):
            try:
                samples.append((datetime.strptime(rec[0].strip(), STAMP), float(rec[1]), float(rec[2])))
            except (ValueError, IndexError):
                pass
    return samples


def row_rate(out: Path, row: str) -> dict:
    if row == "loop":
        path = out / "loop.json"
        if not path.exists():
            return {}
        rate = json.loads(path.read_text())
        return {"images_per_s": rate.get("median"), "windows": rate["windows"],
                "timed_images_per_s": rate.get("timed_images_per_s")}
    path = out / f"{row}.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")] if path.exists() else []
    if not lines:
        return {}
    return {"images_per_s": lines[-1]["images_per_s"], "repeats_images_per_s": lines[-1].get("repeats_images_per_s")}


def summarize(out: Path) -> dict:
    clocks = read_clocks(out / "clocks.csv")
    summary = {}
    for row, edges in read_phases(out / "phases.csv").items():
        if "end" not in edges:  # cut off by the call's timeout: its numbers, if any, are not a row's
            summary[row] = {"finished": False}
            continue
        entry = row_rate(out, row)
        mid = edges["start"] + (edges["end"] - edges["start"]) / 2
        inside = [c for c in clocks if mid <= c[0] <= edges["end"]]
        if inside:
            entry["sm_clock_mhz_median"] = statistics.median(c[1] for c in inside)
            entry["power_w_median"] = statistics.median(c[2] for c in inside)
        entry["seconds"] = round((edges["end"] - edges["start"]).total_seconds(), 1)
        summary[row] = entry
    return summary


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python scripts/loop_gap_summary.py OUT_DIR")
    out = Path(args[0])
    if not (out / "phases.csv").exists():
        raise SystemExit(f"loop_gap_summary.py: {out / 'phases.csv'} does not exist (not a bench_loop_gap.sh folder)")
    summary = summarize(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Where the training loop's ~8% below `scripts/bench_train.py` goes (issue 18; docs/gpu_runbook.md). Four rows on
# the same random data set, one GPU, with the GPU's SM clock and power sampled every 0.5 s throughout:
#   script_short  scripts/bench_train.py with the preset's recipe keys as overrides: the rows BENCHMARKS.md has quoted
#                 (its own base config: DDPM/eps, uniform t, no qk-norm, EMA 0.9999, constant lr)
#   preset_short  `ditlab bench train` of the preset itself (flow, logit-normal t, qk-norm, ...): 3 x 20 steps
#   preset_long   the same, 2 x 1,000 steps: the GPU's sustained clocks instead of a ~1 s burst
#   loop          `ditlab train` of the preset for LOOP_S seconds of timed training: its log windows' images/s
# script_short against preset_short is the config's share of the gap, preset_short against preset_long the clocks',
# preset_long against loop the loop's own work. Usage: scripts/bench_loop_gap.sh OUT_DIR [LOOP_S] [ROWS] [KEY=VALUE ...]
# (ROWS: a comma list of the four, default all; ~5 min on an H100; KEY=VALUE: overrides for every row after the
# recipe's, e.g. a smoke test on the CPU). Results: OUT_DIR/*.jsonl, clocks.csv, phases.csv, summary.json.
set -euo pipefail
out=${1:?usage: scripts/bench_loop_gap.sh OUT_DIR [LOOP_S] [ROWS]}; loop_s=${2:-60}
rows=${3:-script_short,preset_short,preset_long,loop}
extra=("${@:4}")
mkdir -p "$out"
IFS=, read -ra wanted <<< "$rows"
for r in "${wanted[@]}"; do
  case $r in script_short|preset_short|preset_long|loop) ;;
    *) echo "bench_loop_gap.sh: unknown row '$r' (script_short, preset_short, preset_long, loop)" >&2; exit 2 ;;
  esac
done
preset=configs/cifar10_speedrun.yaml
# The preset's keys beyond speedrun_v1.yaml, as the twenty-sixth session's bench rows gave them.
recipe=(optim.name=muon optim.lr=2e-3 model.mlp=swiglu model.long_skips=true train.nan_check=log
        train.fast_kernels=auto train.compile_mode=reduce-overhead)
data=$(python3 -c "from ditlab.bench import write_random_npz; print(write_random_npz())")
work=$(mktemp -d)
clocks_pid=
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu --format=csv,noheader,nounits -lms 500 \
    > "$out/clocks.csv" &
  clocks_pid=$!
fi
: > "$out/phases.csv"
phase() { echo "$1,$(date -u +%Y/%m/%d\ %H:%M:%S.%3N)" >> "$out/phases.csv"; }
for r in "${wanted[@]}"; do
  phase "$r start"
  case $r in
    script_short)
      python3 scripts/bench_train.py "${recipe[@]}" "${extra[@]}" --compile yes --arch DiT-S/2 --warmup 15 --steps 20 --repeats 3 \
        > "$out/script_short.jsonl" ;;
    preset_short)
      python3 -m ditlab bench train "$preset" data.path="$data" train.run_dir="$work/b1" "${extra[@]}" --warmup 15 \
        --steps-per-repeat 20 --repeats 3 > "$out/preset_short.jsonl" ;;
    preset_long)
      python3 -m ditlab bench train "$preset" data.path="$data" train.run_dir="$work/b2" "${extra[@]}" --warmup 15 \
        --steps-per-repeat 1000 --repeats 2 > "$out/preset_long.jsonl" ;;
    loop)
      python3 -m ditlab train "$preset" data.path="$data" train.run_dir="$work/loop" train.time_limit="$loop_s" \
        "${extra[@]}" --no-progress > "$out/loop.txt" 2>&1
      python3 scripts/loop_rate.py "$work/loop" > "$out/loop.json"
      cp "$work/loop/metrics.jsonl" "$out/loop_metrics.jsonl" ;;
  esac
  phase "$r end"
done
[ -n "$clocks_pid" ] && kill "$clocks_pid" 2>/dev/null || true
python3 - "$out" <<'EOF'
import csv, json, statistics, sys
from datetime import datetime
from pathlib import Path

out = Path(sys.argv[1])
def when(text):
    return datetime.strptime(text.strip(), "%Y/%m/%d %H:%M:%S.%f")
phases, summary = {}, {}
for name, stamp in csv.reader(open(out / "phases.csv")):
    row, edge = name.rsplit(" ", 1)
    phases.setdefault(row, {})[edge] = when(stamp)
clocks = []
if (out / "clocks.csv").exists():
    for rec in csv.reader(open(out / "clocks.csv")):
        try:
            clocks.append((when(rec[0]), float(rec[1]), float(rec[2])))
        except (ValueError, IndexError):
            pass
for row, edges in phases.items():
    entry = {}
    jsonl = out / f"{row}.jsonl"
    if jsonl.exists():
        lines = [json.loads(l) for l in jsonl.read_text().splitlines() if l.startswith("{")]
        if lines:
            entry["images_per_s"] = lines[-1]["images_per_s"]
            entry["repeats_images_per_s"] = lines[-1].get("repeats_images_per_s")
    if row == "loop" and (out / "loop.json").exists():  # scripts/loop_rate.py: its windows' median
        rate = json.loads((out / "loop.json").read_text())
        entry.update(images_per_s=rate.get("median"), windows=rate["windows"],
                     timed_images_per_s=rate.get("timed_images_per_s"))
    # the second half of the phase: past compilation and warm-up, where the timed steps are
    mid = edges["start"] + (edges["end"] - edges["start"]) / 2
    inside = [c for c in clocks if mid <= c[0] <= edges["end"]]
    if inside:
        entry["sm_clock_mhz_median"] = statistics.median(c[1] for c in inside)
        entry["power_w_median"] = statistics.median(c[2] for c in inside)
    entry["seconds"] = round((edges["end"] - edges["start"]).total_seconds(), 1)
    summary[row] = entry
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary))
EOF

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
out=${1:?usage: scripts/bench_loop_gap.sh OUT_DIR [LOOP_S] [ROWS] [KEY=VALUE ...]}; loop_s=${2:-60}
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
  trap 'kill "$clocks_pid" 2>/dev/null || true' EXIT  # also when a timeout stops the script
fi
: > "$out/phases.csv"
# local time, as nvidia-smi writes its timestamps
phase() { echo "$1,$(date +%Y/%m/%d\ %H:%M:%S.%3N)" >> "$out/phases.csv"; }
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
python3 scripts/loop_gap_summary.py "$out"

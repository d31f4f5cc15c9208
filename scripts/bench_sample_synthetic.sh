#!/usr/bin/env bash
# Sampling throughput without a trained run: train ARCH for a few steps on random data, then
# `ditlab bench sample` eager, compiled, and compiled with the fused adaLN kernels. Usage: scripts/bench_sample_synthetic.sh [ARCH] [CFG] [ROWS]
# ROWS: which rows, any of eager,compiled,fused (default all three). The eager row alone takes ~2 min on an H100
# (33 img/s, measured twice): leave it out where the question is compiled against fused.
set -euo pipefail
arch=${1:-DiT-S/2}; cfg=${2:-1.5}; rows=${3:-eager,compiled,fused}
declare -A flags=([eager]="--compile=off --fast-kernels=off" [compiled]="--compile=on --fast-kernels=off"
                  [fused]="--compile=on --fast-kernels=on")
IFS=, read -ra wanted <<< "$rows"
for r in "${wanted[@]}"; do
  [ -n "${flags[$r]+x}" ] || { echo "bench_sample_synthetic.sh: unknown row '$r' (eager, compiled, fused)" >&2; exit 2; }
done
run=$(mktemp -d)/run
data=$(python3 -c "from ditlab.bench import write_random_npz; print(write_random_npz())")
# speedrun_v1.yaml: the recipe of the sampling rows in BENCHMARKS.md (the preset has SwiGLU and long skips since
# the twenty-sixth session, another network to sample)
python3 -m ditlab train configs/speedrun_v1.yaml data.path="$data" model.arch="$arch" train.run_dir="$run" \
  train.steps=3 train.time_limit=0 train.compile=false train.log_every=1 --no-progress >/dev/null 2>&1
for r in "${wanted[@]}"; do
  c=${flags[$r]}
  # shellcheck disable=SC2086
  python3 -m ditlab bench sample "$run" --num 2000 --batch-size 1000 --sampler heun --steps 50 --cfg "$cfg" \
    --repeats 2 $c 2>/dev/null
done

#!/usr/bin/env bash
# Sampling throughput without a trained run: train ARCH for a few steps on random data, then
# `ditlab bench sample` eager, compiled, and compiled with the fused adaLN kernels. Usage: scripts/bench_sample_synthetic.sh [ARCH] [CFG]
set -euo pipefail
arch=${1:-DiT-S/2}; cfg=${2:-1.5}
run=$(mktemp -d)/run
data=$(python3 -c "from ditlab.bench import write_random_npz; print(write_random_npz())")
python3 -m ditlab train configs/cifar10_speedrun.yaml data.path="$data" model.arch="$arch" train.run_dir="$run" \
  train.steps=3 train.time_limit=0 train.compile=false train.log_every=1 --no-progress >/dev/null 2>&1
for c in "--compile=off --fast-kernels=off" "--compile=on --fast-kernels=off" "--compile=on --fast-kernels=on"; do
  # shellcheck disable=SC2086
  python3 -m ditlab bench sample "$run" --num 2000 --batch-size 1000 --sampler heun --steps 50 --cfg "$cfg" \
    --repeats 2 $c 2>/dev/null
done

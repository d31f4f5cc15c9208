#!/usr/bin/env bash
# FID-10k against the number of network evaluations for one trained run.
#   [SAMPLER=euler|heun] [CFG_INTERVAL="LO HI"] scripts/fid_vs_nfe.sh RUN REF.npz INCEPTION CFG [NFE ...]
# Default NFE: 10 20 50 100. Euler spends one evaluation per step; Heun 2 * steps - 1 (no correction
# on the last step), so Heun runs the largest step count within each budget (5, 10, 25, 50 steps).
# One JSON line per NFE on stdout (see scripts/speedrun.sh fid).
set -euo pipefail
run=$1 ref=$2 inception=$3 cfg=$4; shift 4
nfes=${*:-10 20 50 100}
sampler=${SAMPLER:-euler}
for n in $nfes; do
  steps=$n
  if [ "$sampler" = heun ]; then steps=$(( (n + 1) / 2 )); fi
  # shellcheck disable=SC2086  # CFG_INTERVAL is two words on purpose
  bash "$(dirname "$0")/speedrun.sh" fid "$run" "$ref" "$inception" "$cfg" "$steps" "$sampler" ${CFG_INTERVAL:-}
done

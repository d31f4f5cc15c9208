#!/usr/bin/env bash
# FID-10k against the number of network evaluations for one trained run (Euler: NFE = steps).
#   scripts/fid_vs_nfe.sh RUN REF.npz INCEPTION CFG [NFE ...]     (default NFE: 10 20 50 100)
# One JSON line per NFE on stdout (see scripts/speedrun.sh fid).
set -euo pipefail
run=$1 ref=$2 inception=$3 cfg=$4; shift 4
nfes=${*:-10 20 50 100}
for n in $nfes; do
  bash "$(dirname "$0")/speedrun.sh" fid "$run" "$ref" "$inception" "$cfg" "$n" euler
done

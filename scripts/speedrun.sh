#!/usr/bin/env bash
# The CIFAR-10 speedrun of BENCHMARKS.md, in stages (each fits one 10-minute GPU command):
#   scripts/speedrun.sh train  RUN DATA_ZIP [key=value ...]   420 s of timed training (configs/cifar10_speedrun.yaml)
#   scripts/speedrun.sh ref    DATA_ZIP REF.npz INCEPTION     reference statistics of the training set
#   scripts/speedrun.sh fid    RUN REF.npz INCEPTION CFG STEPS [SAMPLER [LO HI]]   10,000 samples -> FID-10k (+KID),
#                              JSON; LO HI: guide only where sigma/alpha is in (LO, HI] (guidance interval)
# Output JSON lines go to stdout; sample grids to RUN/grid_cfg*_steps*.png.
set -euo pipefail
stage=$1; shift
ditlab() { python3 -m ditlab "$@"; }
case "$stage" in
  train)
    run=$1 data=$2; shift 2
    ditlab train configs/cifar10_speedrun.yaml data.path="$data" train.run_dir="$run" "$@" --no-progress
    cat "$run/summary.json" ;;
  ref)
    ditlab fid ref "$1" --out "$2" --inception "$3" ;;
  fid)
    run=$1 ref=$2 inception=$3 cfg=$4 steps=$5 sampler=${6:-heun} lo=${7:-} hi=${8:-}
    tag="cfg${cfg}_${sampler}${steps}" interval=()
    if [ -n "$lo" ]; then tag="cfg${cfg}i${lo}-${hi}_${sampler}${steps}"; interval=(--cfg-interval "$lo" "$hi"); fi
    out="$run/samples_${tag}.npz"
    t0=$(date +%s.%N)
    ditlab sample "$run" --num 10000 --sampler "$sampler" --steps "$steps" --cfg "$cfg" "${interval[@]}" --seed 0 \
      --batch-size 1000 --out "$out" --grid "$run/grid_${tag}.png" --grid-num 100 >&2
    t1=$(date +%s.%N)
    ditlab fid "$out" --ref "$ref" --inception "$inception" --kid --json "$run/fid_${tag}.json" >&2
    python3 - "$run/fid_${tag}.json" "$cfg" "$steps" "$sampler" "$t0" "$t1" "$lo" "$hi" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d.update(cfg=float(sys.argv[2]), steps=int(sys.argv[3]), sampler=sys.argv[4],
         sample_seconds=round(float(sys.argv[6]) - float(sys.argv[5]), 1))
if sys.argv[7]:
    d["cfg_interval"] = [float(sys.argv[7]), float(sys.argv[8])]
print(json.dumps(d))
PY
    ;;
  *) echo "usage: $0 {train|ref|fid} ..." >&2; exit 2 ;;
esac

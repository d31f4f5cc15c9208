#!/usr/bin/env bash
# The super-resolution acceptance of BENCHMARKS.md (issue 4): a model trained with condition dropout
# and noise augmentation (configs/cifar10_sr.yaml) against one trained without (cifar10_sr_plain.yaml).
#   scripts/sr_study.sh train RUN CONFIG TRAIN_ZIP [key=value ...]       time-limited training
#   scripts/sr_study.sh eval  RUN TEST_ZIP REF.npz INCEPTION [NUM]       SR of the first NUM test images:
#        PSNR (+ bilinear baseline), FID-NUM against REF, and `ditlab diagnose collapse` (8 x 8 grid)
# JSON lines on stdout; samples, grids and the diagnosis under RUN/.
set -euo pipefail
stage=$1; shift
ditlab() { python3 -m ditlab "$@"; }
case "$stage" in
  train)
    run=$1 config=$2 data=$3; shift 3
    ditlab train "$config" data.path="$data" train.run_dir="$run" "$@" --no-progress >&2
    cat "$run/summary.json" ;;
  eval)
    run=$1 test=$2 ref=$3 inception=$4 num=${5:-10000}
    ditlab sample "$run" --data "$test" --num "$num" --seed 0 --batch-size 1000 --out "$run/sr_test.npz" \
      --grid "$run/sr_test_grid.png" --grid-num 64 >&2
    ditlab psnr "$run/sr_test.npz" --data "$test"
    ditlab fid "$run/sr_test.npz" --ref "$ref" --inception "$inception" --kid
    ditlab diagnose collapse "$run" --data "$test" --conditions 8 --num-seeds 8 --cfg 1 2 4 --cond-noise 0 0.1 \
      --inception "$inception" --out "$run/diagnose" >&2
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({'verdict': r['verdict'], 'settings': [{k: s[k] for k in ('cfg', 'cond_noise', 'seed_to_residual')} for s in r['settings']]}))" "$run/diagnose/collapse.json" ;;
  *) echo "usage: $0 {train|eval} ..." >&2; exit 2 ;;
esac

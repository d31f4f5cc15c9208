#!/usr/bin/env bash
# A long in-context regression run (issue 6, d = 20) spread over several device calls: each call
# trains until SECONDS have passed, then SIGTERM makes ditlab save at the step boundary (exit 143);
# the next call resumes from that checkpoint. The learning-rate schedule follows train.steps, so the
# pieces add up to one uninterrupted run (checkpoints carry the RNG and data state).
#   scripts/icl_long.sh RUN_DIR STEPS [SECONDS [CONFIG [override ...]]]
# e.g. scripts/icl_long.sh /root/runs/icl_long 40000 540 configs/icl.yaml   (the preset: two calls)
set -uo pipefail
run=$1 steps=$2 secs=${3:-540} config=${4:-configs/icl.yaml}
shift $(( $# < 4 ? $# : 4 ))
mkdir -p "$run"
timeout -s TERM "$secs" python3 -m ditlab train "$config" train.run_dir="$run" train.steps="$steps" \
  train.time_limit=0 "$@" --resume --no-progress >> "$run/train.log" 2>&1
rc=$?
tail -n 2 "$run/train.log"
case $rc in
  0) echo "icl_long: finished all $steps steps" ;;
  143 | 124) echo "icl_long: stopped after $secs s with a checkpoint; call again to continue" ;;
  *) echo "icl_long: training failed (exit $rc), see $run/train.log"; exit "$rc" ;;
esac

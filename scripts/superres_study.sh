#!/usr/bin/env bash
# Issue 16's GPU acceptance (docs/superres.md): 16 -> 32 super-resolution on CIFAR-10 with the condition
# injected as tokens / cross / branch, at equal training time, in stages that each fit one 10-minute command.
#   scripts/superres_study.sh train  TRAIN_ZIP STUDY SECONDS MODE...   train each mode for SECONDS (train.time_limit)
#   scripts/superres_study.sh sample TEST_ZIP  STUDY MODE...           10k samples on the test set at CFG 1 and 2, PSNR
#   scripts/superres_study.sh score  TEST_ZIP  INCEPTION STUDY MODE... FID-10k vs the test set, collapse sweep
#                                                                      (cond-scale 1 / 0.8 / 0.5 x CFG 1 / 2), summary
# Finished work is skipped, so a stage can be repeated. $DITLAB_EXTRA adds overrides to training (a CPU smoke run).
set -uo pipefail
stage=$1; shift
dl() { python3 -m ditlab "$@"; }
num=${DITLAB_NUM:-10000}
case $stage in
  train)
    data=$1 study=$2 seconds=$3; shift 3; mkdir -p "$study"
    for m in "$@"; do
      run=$study/sr_$m
      [ -f "$run/summary.json" ] && { echo "skip train $m"; continue; }
      rm -rf "$run"
      dl train configs/cifar10_sr.yaml task.cond_injection="$m" train.run_dir="$run" data.path="$data" \
        train.time_limit="$seconds" ${DITLAB_EXTRA:-} --no-progress > "$study/train_$m.log" 2>&1
      echo "train $m: exit $? $(grep -o 'time limit.*' "$study/train_$m.log" | tail -1)"
    done ;;
  sample)
    data=$1 study=$2; shift 2
    for m in "$@"; do
      run=$study/sr_$m
      for c in 1 2; do
        [ -f "$run/psnr_cfg$c.json" ] && continue
        dl sample "$run" --data "$data" -n "$num" --cfg $c --out "$run/samples_cfg$c.npz" \
          --grid "$run/grid_cfg$c.png" >> "$run/study.log" 2>&1 &&
        dl psnr "$run/samples_cfg$c.npz" --data "$data" > "$run/psnr_cfg$c.json" 2>> "$run/study.log"
      done
      echo "sample $m: $(cat "$run"/psnr_cfg*.json | tr '\n' ' ')"
    done ;;
  score)
    data=$1 inception=$2 study=$3; shift 3
    [ -f "$study/ref_test.npz" ] || dl fid ref "$data" --out "$study/ref_test.npz" --inception "$inception" --no-progress
    for m in "$@"; do
      run=$study/sr_$m
      for c in 1 2; do
        [ -f "$run/fid_cfg$c.json" ] || dl fid "$run/samples_cfg$c.npz" --ref "$study/ref_test.npz" \
          --inception "$inception" --json "$run/fid_cfg$c.json" --no-progress >> "$run/study.log" 2>&1
      done
      [ -f "$run/diagnose/collapse.json" ] || dl diagnose collapse "$run" --data "$data" --cfg 1 2 \
        --cond-scale 1 0.8 0.5 --inception "$inception" --out "$run/diagnose" >> "$run/study.log" 2>&1
      echo "score $m: exit $?"
    done
    python3 - "$study" "$@" <<'PY'
import json, sys
from pathlib import Path
study = Path(sys.argv[1])
rows = []
for m in sys.argv[2:]:
    run = study / f"sr_{m}"
    row = {"mode": m}
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    row["steps"] = summary.get("steps")
    row["images_per_s"] = summary.get("images_per_s")
    row["parameters"] = summary.get("parameters")
    for c in (1, 2):
        for kind in ("psnr", "fid"):
            f = run / f"{kind}_cfg{c}.json"
            if f.exists():
                r = json.loads(f.read_text().strip().splitlines()[-1])
                row[f"{kind}_cfg{c}"] = r.get("psnr_db", r.get("fid"))
    f = run / "diagnose" / "collapse.json"
    if f.exists():
        row["collapse"] = json.loads(f.read_text())
    rows.append(row)
(study / "superres_study.json").write_text(json.dumps(rows, indent=1))
print(json.dumps(rows)[:3000])
PY
    ;;
  *) echo "usage: $0 {train|sample|score} ..." >&2; exit 2 ;;
esac

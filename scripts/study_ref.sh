#!/usr/bin/env bash
# The FID reference of a study's training set, made once: STUDY/ref_train.npz (the `ref` stage of
# scripts/speedrun_study.sh and scripts/lift_study.sh, whose `run` stages score against it).
#   scripts/study_ref.sh TRAIN_ZIP INCEPTION STUDY
set -euo pipefail
train=$1 inception=$2 study=$3
mkdir -p "$study"
[ -f "$study/ref_train.npz" ] || python3 -m ditlab fid ref "$train" --out "$study/ref_train.npz" \
  --inception "$inception" --no-progress

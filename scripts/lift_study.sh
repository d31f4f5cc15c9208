#!/usr/bin/env bash
# The LIFT ablation of issue 5 (user note 004; configs/ablations/lift.yaml, docs/lift.md) on one GPU, in
# stages that each fit one 10-minute command; `run` resumes where the previous command stopped.
#   scripts/lift_study.sh ref     TRAIN_ZIP INCEPTION STUDY                 STUDY/ref_train.npz (FID reference)
#   scripts/lift_study.sh run     TRAIN_ZIP TEST_ZIP INCEPTION STUDY [BUDGET_S] [ablate flags, e.g. --only V --seeds 0 1]
#                                                                           one slice of the ablation
#   scripts/lift_study.sh collect STUDY DEST                                results + a tar of grids/heat maps
#   scripts/lift_study.sh restore TGZ STUDY                                 a collected archive's scores back
# `run` exits 3 while work is left: call it again (finished runs and scores are skipped). STUDY must
# survive between commands (a folder under runs/, which git ignores, on a machine that stays warm). A machine
# can be taken back between two commands: `collect` into $OUT after every `run`; on the next machine, after
# `ref`, `restore` the last archive and `run` goes on from its scores (a unit not fully scored is trained and
# scored again whole; the run folders themselves are not restored, so no unit counts as trained without its
# checkpoint).
#
# Budget arithmetic (H100, ~25 min of device time in all, at most 10 min per command):
#   training  8 variants x (60 s timed + ~30 s data loading, compilation, checkpoint)  ~ 12 min
#   sampling 17 (variant, path) pairs x 2,000 samples x Heun 20 steps (39 NFE), eager bf16:
#            ~78k image-evaluations ~ 16 s per LIFT pair (320 tokens), + ~3 s of Inception  ~  5.5 min
#   error grids 3 LIFT variants x 13 x 13 nodes x 256 images (~43k evaluations each)    ~  0.5 min
#   reference statistics of the 50k training images                                     ~  1 min
#   ~19 min of work, + machine start and staging the data and the network (../shared/GPU.md).
# BUDGET_S (default 420) stops `run` from starting new work after that many seconds; one unit (a
# training, an error grid or a scored path) takes at most ~100 s, so a command ends well within 10 min.
# Three `run` commands finish the plan; the variants are ordered so that a short budget drops the
# least important ones (lift_mixture, lift_shift) first.
# $DITLAB_ABLATION (default configs/ablations/lift.yaml) names another ablation file: a CPU smoke run uses a copy
# with fewer samples and seconds (docs/lift.md, "Running the study").
set -euo pipefail
stage=$1; shift
ditlab() { python3 -m ditlab "$@"; }
case "$stage" in
  ref)
    bash "$(dirname "$0")/study_ref.sh" "$@" ;;
  run)
    train=$1 test=$2 inception=$3 study=$4 budget=${5:-420}; shift 5 || shift $#
    code=0
    ditlab ablate "${DITLAB_ABLATION:-configs/ablations/lift.yaml}" --out "$study" --ref "$study/ref_train.npz" --inception "$inception" \
      --set data.path="$train" --data "$test" --budget-s "$budget" "$@" || code=$?
    ls "$study/scores" 2>/dev/null | wc -l | xargs -I{} echo "{\"scored\": {}, \"exit\": $code}"
    exit "$code" ;;
  collect)
    study=$1 dest=$2
    mkdir -p "$dest"
    cp "$study"/results.md "$study"/results.csv "$dest"/
    [ -f "$study/results.png" ] && cp "$study/results.png" "$dest"/
    # shellcheck disable=SC2046
    tar -czf "$dest/lift_study_files.tgz" -C "$study" $(cd "$study" && ls -d scores grids runs/*/lift_errors.png \
      runs/*/summary.json runs/*/metrics.jsonl 2>/dev/null) ;;
  restore)
    tgz=$1 study=$2
    mkdir -p "$study"
    tar -xzf "$tgz" -C "$study" scores grids 2>/dev/null || tar -xzf "$tgz" -C "$study" scores
    echo "{\"restored_scores\": $(find "$study/scores" -name '*.json' | wc -l)}" ;;
  *) echo "usage: $0 {ref|run|collect|restore} ..." >&2; exit 2 ;;
esac

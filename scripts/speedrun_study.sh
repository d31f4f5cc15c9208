#!/usr/bin/env bash
# Issue 18's recipe search (configs/ablations/speedrun.yaml, docs/speedrun.md) on the device machine, in
# commands of at most 10 minutes; every command continues where the previous one stopped.
#   scripts/speedrun_study.sh ref     TRAIN_ZIP INCEPTION STUDY              STUDY/ref_train.npz (FID reference, 50k)
#   scripts/speedrun_study.sh run     TRAIN_ZIP INCEPTION STUDY [SECONDS] [ablate flags...]
#                                     one slice (default 570 s): a unit (train + score) starts only when it should
#                                     end by SECONDS - 100 s, judged by the last unit's time (the first unit's
#                                     scoring is what the 100 s are for), or, when it is longer than that (the
#                                     final and long stages), as the command's first; at SECONDS a SIGTERM stops a
#                                     training at a checkpoint (resumed next time with the rest of its time
#                                     budget; finished scores are kept), and no score starts that it would cut
#                                     off (--deadline-s SECONDS - 10: the next command scores it); exit 3 = run
#                                     it again
#   scripts/speedrun_study.sh collect STUDY DEST                             DEST/stages.md and one archive
#                                                                            DEST/speedrun_study_files.tgz; a
#                                                                            folder of a file without stages
#                                                                            (another ablation's --out: the time
#                                                                            to quality, the guidance study):
#                                                                            DEST/NAME_files.tgz, NAME its own
#   scripts/speedrun_study.sh restore TGZ STUDY                              a collected archive's scores back
#   scripts/speedrun_study.sh merge   OLD.tgz NEW.tgz OUT.tgz                the archive to commit after a session:
#                                                                            NEW, with OLD's runs that NEW lacks
#   scripts/speedrun_study.sh pack    STUDY TAR [--with-best]                the runs stopped at a checkpoint,
#                                                                            to go on on another machine
#   scripts/speedrun_study.sh unpack  TAR STUDY                              (the long stage outlasts a session:
#                                                                            docs/speedrun.md)
# STUDY must survive between commands (a folder under /root on a machine that stays warm, ../shared/GPU.md);
# before a machine goes back, `collect` into $OUT; on the next machine, `restore` the archive (carried in
# an ignored folder) and `run` goes on from the scores it holds (a unit not fully scored is trained
# and scored again whole).
# Extra flags go to `ditlab ablate`, e.g. --stage screen, --only baseline, --gpus 8 on a machine with 8 GPUs,
# --machine-left-s S (the device session's time left, less staging and collect: a final-stage unit spans
# calls, and one that cannot end before the machine goes back is not started).
set -euo pipefail
stage=$1; shift
case "$stage" in
  ref)
    bash "$(dirname "$0")/study_ref.sh" "$@" ;;
  run)
    train=$1 inception=$2 study=$3 seconds=${4:-570}; shift 4 || shift $#
    code=0
    timeout -s TERM -k 20 "$seconds" python3 -m ditlab ablate configs/ablations/speedrun.yaml --out "$study" \
      --ref "$study/ref_train.npz" --inception "$inception" --set data.path="$train" \
      --budget-s $((seconds > 300 ? seconds - 100 : seconds / 2)) --deadline-s $((seconds - 10)) "$@" || code=$?
    [ "$code" = 124 ] && code=3  # stopped by the timeout: more to do
    # what is left, and about how long it takes at the rates measured so far (the reply shows the output's end)
    python3 -m ditlab ablate configs/ablations/speedrun.yaml --out "$study" --plan 2>&1 | tail -n 1 || true
    echo "{\"scored\": $(find "$study" -path '*/scores/*.json' | wc -l), \"exit\": $code}"
    exit "$code" ;;
  collect)
    # Two files (a device call returns only a few): stages.md, and one archive of every stage's results
    # table / csv / plots, score files, grids, failure records, run summaries, metrics and configs. The results
    # tables also go to stdout. A folder without stages (results.md at its top) has its own archive name.
    study=$1 dest=$(mkdir -p "$2" && cd "$2" && pwd)  # absolute: tar runs inside STUDY
    cp "$study"/stages.md "$dest"/ 2>/dev/null || true
    if [ -f "$study/results.md" ] || [ -d "$study/scores" ]; then
      prefix="" archive="$(basename "$(cd "$study" && pwd)")_files.tgz"
    else
      prefix="*/" archive=speedrun_study_files.tgz
    fi
    files=$(cd "$study" && ls -d stages.md ${prefix}results.md ${prefix}results.csv ${prefix}results*.png \
      ${prefix}scores ${prefix}grids ${prefix}failed ${prefix}runs/*/summary.json ${prefix}runs/*/metrics.jsonl \
      ${prefix}runs/*/config.yaml 2>/dev/null || true)
    if [ -n "$files" ]; then (cd "$study" && tar -czf "$dest/$archive" $files); else
      echo "collect: nothing in $study yet"; fi
    for s in "$study"/${prefix}results.md; do [ -f "$s" ] && { echo "== $s"; cat "$s"; }; done
    true ;;
  restore)
    # On a fresh machine: put the score files (and grids) of an earlier machine's collect back into STUDY;
    # `run` then skips every score that exists. A variant with some of its scores missing is trained again.
    # Either kind of archive: a study's (STAGE/scores/...) or a folder's without stages (scores/...).
    tgz=$1 study=$2
    mkdir -p "$study"
    prefix="*/"
    # (grep reads the whole listing: with -q it would stop early, and pipefail would count tar's broken pipe)
    if tar -tzf "$tgz" | grep '^scores/' > /dev/null; then prefix=""; fi
    tar -xzf "$tgz" -C "$study" --wildcards "${prefix}scores/*" "${prefix}grids/*" 2>/dev/null ||
      tar -xzf "$tgz" -C "$study" --wildcards "${prefix}scores/*"
    echo "{\"restored_scores\": $(find "$study" -path '*/scores/*.json' | wc -l)}" ;;
  pack)
    # Every run folder stopped at a checkpoint (checkpoints/latest, no summary.json) with its latest checkpoint,
    # not the older ones rotation keeps; everything else of the run (config, metrics, TensorBoard,
    # ema_snapshots/ for post-hoc EMA) whole. The checkpoint `best` names (the best in-training FID) only with
    # --with-best or when it is the latest: the study scores a run's latest checkpoint and reads its time to
    # FID from metrics.jsonl, and a second S/2 training state doubles the carry (~520 MB more). Without it the
    # pointer stays behind too, and the resumed run's next evaluation starts a new best. Bring TAR back with
    # `gpu_stage.py give`; `ditlab ablate` resumes such a folder with the rest of its time budget.
    study=$1 tar=$2 with_best=${3:-}
    if [ -n "$with_best" ] && [ "$with_best" != --with-best ]; then
      echo "pack: unknown option $with_best (the one option is --with-best)" >&2; exit 2; fi
    list=$(mktemp)
    (cd "$study" && for run in */runs/*/; do
      run=${run%/}
      { [ -f "$run/summary.json" ] || [ ! -f "$run/checkpoints/latest" ]; } && continue
      latest=$(cat "$run/checkpoints/latest")
      find "$run" -path "$run/checkpoints/step_*" -prune -o -path "$run/checkpoints/best" -prune -o -type f -print
      find "$run/checkpoints/$latest" -type f
      best=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["checkpoint"])' \
        "$run/checkpoints/best" 2>/dev/null || true)
      if [ -n "$best" ] && [ -d "$run/checkpoints/$best" ] && { [ -n "$with_best" ] || [ "$best" = "$latest" ]; }; then
        echo "$run/checkpoints/best"; find "$run/checkpoints/$best" -type f; fi
    done) | sort -u > "$list"
    if [ ! -s "$list" ]; then echo "pack: no run in $study stopped at a checkpoint" >&2; rm -f "$list"; exit 1; fi
    tar -cf "$tar" -C "$study" -T "$list"
    rm -f "$list"
    echo "{\"packed\": \"$tar\", \"runs\": $(tar -tf "$tar" | cut -d/ -f1-3 | sort -u | wc -l), \"mib\": $(( $(stat -c %s "$tar") >> 20 ))}" ;;
  unpack)
    tar=$1 study=$2
    mkdir -p "$study"
    tar -xf "$tar" -C "$study"
    echo "{\"unpacked\": $(tar -tf "$tar" | cut -d/ -f1-3 | sort -u | wc -l)}" ;;
  merge)
    # After a session, on the developer's machine: the archive to commit. NEW (this session's last collect) holds
    # every score, the restored ones too, but only the runs trained on its machine; OLD's run summaries and metrics
    # are added for the runs NEW lacks. OLD's scores are never taken: one NEW lacks was dropped because its unit was
    # trained again. Grids and plots are left out (every tracked byte counts against a device call's carry); file
    # times are kept (the study's estimates read which score of a training was written first).
    old=$1 new=$2 out=$3
    python3 - "$old" "$new" "$out" <<'PY'
import io, json, re, sys, tarfile
old_path, new_path, out_path = sys.argv[1:]
def members(path):
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
def key(m):
    return m.name[2:] if m.name.startswith("./") else m.name
run_of = re.compile(r"^([^/]+/runs/[^/]+)/")
new = [(m, d) for m, d in members(new_path) if m.isfile()]
have = {key(m) for m, _ in new}
new_runs = {run_of.match(k).group(1) for k in have if run_of.match(k)}
added = [(m, d) for m, d in members(old_path) if m.isfile() and run_of.match(key(m))
         and run_of.match(key(m)).group(1) not in new_runs and key(m) not in have]
with tarfile.open(out_path, "w:gz") as out:
    for m, data in sorted(new + added, key=lambda md: key(md[0])):
        if key(m).endswith(".png"):
            continue
        m.name = key(m)
        out.addfile(m, io.BytesIO(data))
scores = sum(1 for m, _ in new if "/scores/" in key(m) and key(m).endswith(".json"))
print(json.dumps({"merged": out_path, "scores": scores, "runs_from_old": len({run_of.match(key(m)).group(1) for m, _ in added})}))
PY
    ;;
  *) echo "usage: $0 {ref|run|collect|restore|merge|pack|unpack} ..." >&2; exit 2 ;;
esac

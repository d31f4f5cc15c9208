#!/usr/bin/env bash
# Issue 16's GPU acceptance (docs/superres.md): 16 -> 32 super-resolution on CIFAR-10 with the condition
# injected as tokens / cross / branch, at equal training time, in stages that each fit one 10-minute command.
#   scripts/superres_study.sh train   TRAIN_ZIP STUDY SECONDS MODE...   train each mode for SECONDS (train.time_limit)
#   scripts/superres_study.sh sample  TEST_ZIP  STUDY MODE...           10k samples on the test set at CFG 1 and 2, PSNR
#   scripts/superres_study.sh score   TEST_ZIP  INCEPTION STUDY MODE... FID-10k vs the test set, collapse sweep
#                                                                       (cond-scale 1 / 0.8 / 0.5 x CFG 1 / 2), summary
#   scripts/superres_study.sh collect STUDY DEST                        DEST/superres_study.json, .md (the table), .png
#                                                                       (every mode's collapse sweep) + one archive
#                                                                       (grids, sweeps, logs, run summaries)
#   scripts/superres_study.sh restore TGZ STUDY                         the finished modes of a collected archive back into
#                                                                       STUDY (on a fresh machine: their units are then
#                                                                       skipped and the summary covers them)
#   scripts/superres_study.sh all TRAIN_ZIP TEST_ZIP INCEPTION STUDY SECONDS MODE...
#                                   the whole study: each mode trained, sampled and scored before the next mode's
#                                   training starts (a mode's results are complete as soon as they can be), then the
#                                   summary of every mode; no budget unless DITLAB_BUDGET_S is set. On a machine that
#                                   may be taken back between commands, run it once per mode and `collect` each time.
# Finished work is skipped (a mode's training once it has summary.json, a sampling once its .npz exists, a
# score once its .json exists), so a stage can be repeated. Exit code: 0 done, 3 work left (the budget below
# ran out: run the same command again), 1 a unit failed (the stage's log names it: STUDY/train_MODE.log,
# STUDY/sr_MODE/study.log).
# Environment:
#   DITLAB_EXTRA     extra training overrides (a CPU smoke run: model.hidden_size=32 model.depth=2
#                    model.num_heads=2 train.compile=false train.device=cpu train.batch_size=8 train.precision=fp32)
#   DITLAB_NUM       samples per (mode, CFG) in `sample` (default 10000)
#   DITLAB_SAMPLE_BATCH  `ditlab sample --batch-size` (default 250, which divides 10,000: with sample's default
#                    256 the last batch of 16 makes torch.compile compile the network a second time)
#   DITLAB_COLLAPSE  extra flags of `ditlab diagnose collapse` in `score` (a CPU smoke run: --conditions 4
#                    --num-seeds 4; the CPU spends minutes on the Inception features of the default 8 x 8 x 6)
#   DITLAB_JOBS      `sample` and `score`: modes worked on at once, each in its own process (default 1). On one
#                    GPU 3 overlaps each mode's compilation with the others' sampling (twelfth session: the
#                    three modes' sample + score stages of 2,000 samples took 265 s this way). `train` stays
#                    one mode at a time: its modes are compared at equal training time.
#   DITLAB_BUDGET_S  start no new unit (one mode's training, one (mode, CFG) sampling, one mode's scores) after
#                    this many seconds (0 = no limit), so that a command ends within 10 minutes: default 300
#                    for `sample` (a unit of 10k samples at CFG 2 may take ~4 min on an H100, an estimate),
#                    420 for the others (`train` with 90 s per mode: 512 s for the three in one call, measured)
set -uo pipefail
stage=$1; shift
dl() { python3 -m ditlab "$@"; }
num=${DITLAB_NUM:-10000}
if [ "$stage" = sample ]; then budget=${DITLAB_BUDGET_S:-300}; else budget=${DITLAB_BUDGET_S:-420}; fi
left=0 failed=0
jobs=${DITLAB_JOBS:-1}
out_of_time() {  # true (and work is left) once the budget is spent
  if [ "$budget" -gt 0 ] && [ "$SECONDS" -ge "$budget" ]; then left=1; return 0; fi
  return 1
}
finish() {
  [ "$failed" = 1 ] && { echo "$stage: a unit failed (see the logs)" >&2; exit 1; }
  [ "$left" = 1 ] && { echo "$stage: budget of ${budget} s used up with work left; run the same command again" >&2; exit 3; }
  exit 0
}
reap() {  # wait for child PID: its exit 3 is work left, anything but 0 or 3 (1, a refusal 2, killed 137) a failure
  wait "$1"
  case $? in 0) ;; 3) left=1 ;; *) failed=1 ;; esac
}
parallel() {  # parallel NFIXED ARG... MODE...: this stage once per mode in child processes, $jobs at a time
  local nfixed=$1; shift
  local fixed=("${@:1:nfixed}") pids=() m rest
  for m in "${@:nfixed+1}"; do
    rest=$budget  # a child started late gets what is left of this command's budget
    if [ "$budget" -gt 0 ]; then rest=$((budget - SECONDS)); [ "$rest" -ge 1 ] || { left=1; break; }; fi
    DITLAB_JOBS=1 DITLAB_BUDGET_S=$rest bash "$0" "$stage" "${fixed[@]}" "$m" &
    pids+=($!)
    if [ "${#pids[@]}" -ge "$jobs" ]; then
      reap "${pids[0]}"; pids=("${pids[@]:1}")
    fi
  done
  for m in "${pids[@]}"; do
    reap "$m"
  done
  return 0
}
case $stage in
  train)
    data=$1 study=$2 seconds=$3; shift 3; mkdir -p "$study"
    for m in "$@"; do
      run=$study/sr_$m
      [ -f "$run/summary.json" ] && { echo "skip train $m"; continue; }
      out_of_time && break
      rm -rf "$run"
      dl train configs/cifar10_sr.yaml task.cond_injection="$m" train.run_dir="$run" data.path="$data" \
        train.time_limit="$seconds" ${DITLAB_EXTRA:-} --no-progress > "$study/train_$m.log" 2>&1
      rc=$?; [ "$rc" = 0 ] || failed=1
      echo "train $m: exit $rc $(grep -o 'time limit.*' "$study/train_$m.log" | tail -1)"
    done
    finish ;;
  sample)
    data=$1 study=$2; shift 2
    if [ "$jobs" -gt 1 ] && [ "$#" -gt 1 ]; then parallel 2 "$data" "$study" "$@"; finish; fi
    for m in "$@"; do
      run=$study/sr_$m
      [ -f "$run/summary.json" ] || { echo "sample $m: no trained run $run" >&2; failed=1; continue; }
      for c in 1 2; do
        [ -f "$run/psnr_cfg$c.json" ] && continue
        out_of_time && break 2
        # the .npz is written atomically; one left by a command that ran out of time before PSNR is kept
        if [ ! -f "$run/samples_cfg$c.npz" ]; then
          dl sample "$run" --data "$data" -n "$num" --batch-size "${DITLAB_SAMPLE_BATCH:-250}" --cfg $c \
            --out "$run/samples_cfg$c.npz" --grid "$run/grid_cfg$c.png" --no-progress >> "$run/study.log" 2>&1 || { failed=1; continue; }
        fi
        # through a temporary file: a failed psnr must not leave an empty psnr_cfgC.json that later runs skip
        if dl psnr "$run/samples_cfg$c.npz" --data "$data" --no-progress > "$run/psnr_cfg$c.json.tmp" 2>> "$run/study.log"; then
          mv "$run/psnr_cfg$c.json.tmp" "$run/psnr_cfg$c.json"
        else
          rm -f "$run/psnr_cfg$c.json.tmp"; failed=1
        fi
      done
      echo "sample $m: $(cat "$run"/psnr_cfg*.json 2>/dev/null | tr '\n' ' ')"
    done
    finish ;;
  score)
    data=$1 inception=$2 study=$3; shift 3
    [ -f "$study/ref_test.npz" ] || dl fid ref "$data" --out "$study/ref_test.npz" --inception "$inception" \
      --no-progress || failed=1
    # with DITLAB_JOBS > 1 the children score the modes (the reference above is shared) and the loop below
    # finds every unit done; it then only writes the summary
    [ "$failed" = 0 ] && [ "$jobs" -gt 1 ] && [ "$#" -gt 1 ] && parallel 3 "$data" "$inception" "$study" "$@"
    for m in "$@"; do
      [ "$jobs" -gt 1 ] && [ "$failed" = 1 ] && break  # a failed child's unit is not redone here
      run=$study/sr_$m
      [ -f "$run/fid_cfg1.json" ] && [ -f "$run/fid_cfg2.json" ] && [ -f "$run/diagnose/collapse.json" ] && continue
      out_of_time && break
      rc=0
      for c in 1 2; do
        [ -f "$run/fid_cfg$c.json" ] || dl fid "$run/samples_cfg$c.npz" --ref "$study/ref_test.npz" \
          --inception "$inception" --json "$run/fid_cfg$c.json" --no-progress >> "$run/study.log" 2>&1 || rc=1
      done
      [ -f "$run/diagnose/collapse.json" ] || dl diagnose collapse "$run" --data "$data" --cfg 1 2 \
        --cond-scale 1 0.8 0.5 --inception "$inception" --out "$run/diagnose" --no-progress ${DITLAB_COLLAPSE:-} \
        >> "$run/study.log" 2>&1 || rc=1
      [ "$rc" = 0 ] || failed=1
      echo "score $m: exit $rc"
    done
    python3 - "$study" "$@" <<'PY'
import json, sys
from pathlib import Path

def sweep_key(cfg, cond_scale, cond_noise=0.0):
    """The key of one collapse-sweep setting in the summary: cfg2_noise0_cs0.8."""
    return f"cfg{cfg:g}_noise{cond_noise:g}_cs{cond_scale:g}"


def last_json(f):
    """The last line of a result file as JSON; None for a missing, empty or broken file."""
    try:
        return json.loads(f.read_text().strip().splitlines()[-1])
    except (OSError, IndexError, ValueError):
        return None

study = Path(sys.argv[1])
rows = []
for m in sys.argv[2:]:
    run = study / f"sr_{m}"
    row = {"mode": m}
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    row["steps"] = summary.get("steps")
    row["images_per_s"] = summary.get("images_per_s")
    row["parameters"] = summary.get("parameters")
    for c in (1, 2):
        for kind, key in (("psnr", "psnr_db"), ("fid", "fid")):
            r = last_json(run / f"{kind}_cfg{c}.json")
            if r is not None:
                row[f"{kind}_cfg{c}"] = r.get(key)
                if kind == "psnr":
                    row["bilinear_psnr_db"] = r.get("bilinear_psnr_db")
                    row["n"] = r.get("n")
    try:
        collapse = json.loads((run / "diagnose" / "collapse.json").read_text())
    except (OSError, ValueError):
        collapse = None
    if collapse is not None:
        # the verdict (CFG 1, noise 0, W 1) and seed_to_residual per setting; the whole sweep stays in collapse.json
        row["collapse_verdict"] = collapse.get("verdict")
        row["collapse_threshold"] = collapse.get("threshold")
        row["seed_to_residual"] = {sweep_key(s["cfg"], s.get("cond_scale", 1.0), s["cond_noise"]):
                                   s["seed_to_residual"] for s in collapse.get("settings", [])}
    rows.append(row)
(study / "superres_study.json").write_text(json.dumps(rows, indent=1) + "\n")
for row in rows:
    print(json.dumps(row))


def num(x, fmt):
    return "-" if x is None else format(x, fmt)


def pair(row, kind, fmt):
    return f"{num(row.get(f'{kind}_cfg1'), fmt)} / {num(row.get(f'{kind}_cfg2'), fmt)}"


# The same numbers as a table for people (BENCHMARKS.md's layout): seed / residual per condition strength W
scales = sorted({float(k.rsplit("_cs", 1)[1]) for r in rows for k in r.get("seed_to_residual", {})}, reverse=True)


def shares(row, cfg):
    got = row.get("seed_to_residual", {})
    return " / ".join(num(got.get(sweep_key(cfg, w)), ".2f") for w in scales) or "-"


ns = sorted({r["n"] for r in rows if r.get("n")})
w_head = " / ".join(f"{w:g}" for w in scales) or "-"
lines = ["| `task.cond_injection` | steps | parameters | PSNR CFG 1 / 2 (dB) | FID CFG 1 / 2 (vs test) | "
         f"seed / residual at CFG 1: W = {w_head} | at CFG 2 | collapsed |", "|---|---|---|---|---|---|---|---|"]
for r in rows:
    collapsed = (r.get("collapse_verdict") or {}).get("collapsed")
    params = "-" if r.get("parameters") is None else f"{r['parameters'] / 1e6:.1f} M"
    lines.append(f"| {r['mode']} | {num(r.get('steps'), ',')} | {params} | {pair(r, 'psnr', '.2f')} | "
                 f"{pair(r, 'fid', '.1f')} | {shares(r, 1)} | {shares(r, 2)} | "
                 f"{'-' if collapsed is None else ('yes' if collapsed else 'no')} |")
bilinear = next((r["bilinear_psnr_db"] for r in rows if r.get("bilinear_psnr_db") is not None), None)
lines += ["", f"Samples per setting: {', '.join(map(str, ns)) or '-'}; bilinear upsampling: {num(bilinear, '.2f')} dB. "
          "Seed / residual (diagnose collapse, condition noise 0): the samples' across-seed spread over the "
          "energy of the real detail, E||x - up(down(x))||^2; near 0 every seed invents the same detail (below "
          "the threshold: collapsed), near 1 the seeds vary as much as real detail does."]
(study / "superres_study.md").write_text("\n".join(lines) + "\n")

# The collapse sweep of every mode in one figure: seed / residual against W, CFG 1 solid and CFG 2 dashed
if scales and any(r.get("seed_to_residual") for r in rows):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for i, r in enumerate(rows):
            got = r.get("seed_to_residual", {})
            for cfg, style in ((1, "-"), (2, "--")):
                ys = [got.get(sweep_key(cfg, w)) for w in scales]
                pts = [(w, y) for w, y in zip(scales, ys) if y is not None]
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=f"C{i}", label=f"{r['mode']} CFG {cfg}")
        threshold = next((r["collapse_threshold"] for r in rows if r.get("collapse_threshold") is not None), None)
        if threshold is not None:
            ax.axhline(threshold, color="grey", linestyle=":", label="collapse threshold")
            ax.set_ylim(bottom=0)
        ax.set_xlabel("condition strength W (--cond-scale)")
        ax.set_ylabel("across-seed spread / real detail energy")
        ax.set_title("Does each mode still use its noise?")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(study / "superres_study.png", dpi=120)
PY
    finish ;;
  collect)
    study=$1 dest=$2
    mkdir -p "$dest"
    cp "$study/superres_study.json" "$study/superres_study.md" "$dest"/
    [ -f "$study/superres_study.png" ] && cp "$study/superres_study.png" "$dest"/
    # shellcheck disable=SC2046
    tar -czf "$dest/superres_study_files.tgz" -C "$study" $(cd "$study" && ls train_*.log sr_*/summary.json \
      sr_*/config.yaml sr_*/metrics.jsonl sr_*/study.log sr_*/psnr_cfg*.json sr_*/fid_cfg*.json sr_*/grid_cfg*.png \
      sr_*/diagnose/*.json sr_*/diagnose/*.png 2>/dev/null) ;;
  restore)
    # Only modes with every result (PSNR and FID at CFG 1 and 2, the collapse sweep): their summary.json would
    # otherwise pass for a trained run whose checkpoint is gone, and `sample` would fail on it.
    tgz=$1 study=$2
    mkdir -p "$study"
    python3 - "$tgz" "$study" <<'PY'
import json, sys, tarfile
from pathlib import Path, PurePosixPath

tgz, study = sys.argv[1], Path(sys.argv[2])
NEEDED = ("summary.json", "psnr_cfg1.json", "psnr_cfg2.json", "fid_cfg1.json", "fid_cfg2.json", "diagnose/collapse.json")
with tarfile.open(tgz) as tar:
    members = {m.name: m for m in tar.getmembers() if m.isfile()}
    modes = sorted({PurePosixPath(n).parts[0] for n in members if n.startswith("sr_")})
    done = [m for m in modes if all(f"{m}/{f}" in members for f in NEEDED)]
    for name, member in members.items():
        if PurePosixPath(name).parts[0] in done or (name.startswith("train_") and f"sr_{name[6:-4]}" in done):
            tar.extract(member, study, filter="data")
print(json.dumps({"restored": [m[3:] for m in done], "skipped_unfinished": [m[3:] for m in modes if m not in done]}))
PY
    ;;
  all)
    [ "$#" -ge 6 ] || { echo "usage: $0 all TRAIN_ZIP TEST_ZIP INCEPTION STUDY SECONDS MODE..." >&2; exit 2; }
    train_zip=$1 test_zip=$2 inception=$3 study=$4 seconds=$5; shift 5
    export DITLAB_BUDGET_S=${DITLAB_BUDGET_S:-0}
    for m in "$@"; do
      bash "$0" train "$train_zip" "$study" "$seconds" "$m" || exit $?
      bash "$0" sample "$test_zip" "$study" "$m" || exit $?
      bash "$0" score "$test_zip" "$inception" "$study" "$m" > /dev/null || exit $?
    done
    # every unit is done: this only writes the summary of all the modes
    bash "$0" score "$test_zip" "$inception" "$study" "$@" ;;
  *) echo "usage: $0 {train|sample|score|collect|restore|all} ..." >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Issue 8 on a 2-GPU machine, in one command (~7 min): DDP training throughput against one GPU, and the same
# sample set and FID from 1 and 2 GPUs.
#   scripts/ddp_study.sh DATA_ZIP INCEPTION OUT_DIR
# 1. DiT-B/2, bf16 + compile, 256 images per GPU: one GPU (batch 256), then torchrun on 2 GPUs (global 512).
# 2. A short class-conditional DiT-S/2 run trained with torchrun on 2 GPUs (60 s; DATA_ZIP), sampled with
#    1 and with 2 processes (same seed, -n 5000), each sample set scored against DATA_ZIP.
set -uo pipefail
data=$1 inception=$2 out=$3
mkdir -p "$out"
run=${RUN_DIR:-$(mktemp -d)/run}
trun="torchrun --nproc_per_node=2 --standalone"  # a command, not a function: `timeout` runs it
b="scripts/bench_train.py --arch DiT-B/2 --compile yes --repeats 3 --steps 20 --warmup 15 train.nan_check=log"
if [ -z "${SKIP_ONE_GPU_BENCH:-}" ]; then
  timeout 200 python3 $b --batch 256 > "$out/bench_1gpu.jsonl" 2> "$out/bench_1gpu.err"; echo "bench 1 GPU: $?"
fi
timeout 200 $trun $b --batch 512 > "$out/bench_2gpu.jsonl" 2> "$out/bench_2gpu.err"; echo "bench 2 GPUs: $?"
if [ -n "${DDP_VARIANTS:-}" ]; then  # what the 1.85x of the first measurement loses: graph cuts or the all-reduce
  variants=${DDP_VARIANT_LIST:-"train.ddp_split_graph=false train.ddp_bucket_mb=100 train.ddp_compile=step train.ddp_grad_as_bucket_view=true train.ddp_comm_hook=bf16"}
  for v in $variants; do  # each word one setting; join several with a comma, e.g. a=1,b=2
    timeout 200 $trun $b --batch 512 ${v//,/ } >> "$out/bench_2gpu_variants.jsonl" 2>> "$out/bench_2gpu.err"
    echo "bench 2 GPUs $v: $?"
  done
fi
[ -n "${BENCH_ONLY:-}" ] && { cat "$out"/bench_*.jsonl; exit 0; }
rm -rf "$run"
# speedrun_v1.yaml: the recipe BENCHMARKS.md's DDP rows trained (the preset moved on in the twenty-sixth session)
timeout 200 $trun -m ditlab train configs/speedrun_v1.yaml data.path="$data" train.run_dir="$run" \
  train.time_limit=60 train.log_every=100 --no-progress > "$out/train.log" 2>&1; echo "train (2 GPUs): $?"
s="sample $run -n 5000 --steps 10 --seed 0 --batch-size 1250 --compile off"
timeout 100 python3 -m ditlab $s --out "$out/s1.npz" > "$out/sample.log" 2>&1; echo "sample 1 GPU: $?"
timeout 100 $trun -m ditlab $s --out "$out/s2.npz" >> "$out/sample.log" 2>&1; echo "sample 2 GPUs: $?"
python3 - "$out" <<'PY'
import json, sys
import numpy as np
out = sys.argv[1]
a, b = (np.load(f"{out}/s{k}.npz")["arr_0"].astype(int) for k in (1, 2))
d = np.abs(a - b)
print(json.dumps({"same_shape": a.shape == b.shape, "max_abs_diff": int(d.max()),
                  "frac_pixels_differ": float((d > 0).mean()), "frac_pixels_differ_gt1": float((d > 1).mean())}))
PY
f="fid --ref $data --inception $inception --no-progress"
timeout 100 python3 -m ditlab $f "$out/s1.npz" --json "$out/fid_1gpu_samples1.json" > /dev/null 2>> "$out/fid.err"
timeout 100 $trun -m ditlab $f "$out/s2.npz" --json "$out/fid_2gpu_samples2.json" > /dev/null 2>> "$out/fid.err"
cat "$out"/bench_*.jsonl "$out"/fid_*.json; tail -3 "$out/train.log"

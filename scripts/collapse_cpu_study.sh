#!/usr/bin/env bash
# Issue 4's acceptance at CPU scale (~25 min on 2 cores): super-resolution 8x8 -> 16x16 on 60 CIFAR-10
# images (6 per class, 2x average-pooled to 16x16), a small DiT (width 64, depth 4), trained to
# memorisation with and without condition dropout + condition noise augmentation, then
# `ditlab diagnose collapse` on 8 training and 8 held-out conditions x 8 seeds, and PSNR on 60
# held-out images.
#   scripts/collapse_cpu_study.sh CIFAR10_TRAIN_ZIP OUT [STEPS [CIFAR10_TEST_ZIP INCEPTION]]
# With the last two: FID-60 and KID of each model's 60 super-resolved held-out images (and of the 60
# originals, the small-sample floor) against 2,000 seeded test images pooled to 16x16 (~6 min more).
set -euo pipefail
zip=$1 out=$2 steps=${3:-5250} test_zip=${4:-} inception=${5:-}
mkdir -p "$out"
python3 - "$zip" "$out" <<'PY'
import io, sys, zipfile
import numpy as np
from PIL import Image
zf, out = zipfile.ZipFile(sys.argv[1]), sys.argv[2]
names = sorted(n for n in zf.namelist() if not n.endswith("/"))
classes = sorted({n.split("/")[0] for n in names})
def subset(skip, per_class=6):  # the images skip..skip+5 of each class folder, in name order
    images, labels = [], []
    for ci, c in enumerate(classes):
        for n in [m for m in names if m.split("/")[0] == c][skip:skip + per_class]:
            a = np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB"), dtype=np.float32)
            h, w = a.shape[0] // 2, a.shape[1] // 2
            images.append(np.round(a.reshape(h, 2, w, 2, 3).mean((1, 3))).astype(np.uint8))
            labels.append(ci)
    return np.stack(images), np.array(labels)
for name, skip in (("train60", 0), ("heldout60", 100)):
    x, y = subset(skip)
    np.savez(f"{out}/{name}.npz", images=x, labels=y)
PY
common="data.path=$out/train60.npz model.hidden_size=64 model.depth=4 model.num_heads=4 train.batch_size=60
  train.device=cpu train.precision=fp32 train.compile=true train.time_limit=0 train.steps=$steps train.untimed_steps=2
  train.log_every=250 train.nan_check=step optim.lr=1e-3 optim.warmup_steps=200 ema.decay=0.999 train.ckpt_every=2000"
# shellcheck disable=SC2086
OMP_NUM_THREADS=1 python3 -m ditlab train configs/cifar10_sr_plain.yaml $common train.run_dir="$out/plain" \
  --no-progress > "$out/plain.log" 2>&1 &
# shellcheck disable=SC2086
OMP_NUM_THREADS=1 python3 -m ditlab train configs/cifar10_sr.yaml $common train.run_dir="$out/healthy" \
  --no-progress > "$out/healthy.log" 2>&1 &
wait
for r in plain healthy; do
  for c in train60 heldout60; do
    python3 -m ditlab diagnose collapse "$out/$r" --data "$out/$c.npz" --conditions 8 --num-seeds 8 --cfg 1 \
      --cond-noise 0 --threshold 0.1 --device cpu --out "$out/diag_${r}_$c" | tail -n 1
  done
  python3 -m ditlab sample "$out/$r" --data "$out/heldout60.npz" --num 60 --seed 0 --device cpu \
    --out "$out/${r}_sr.npz" > /dev/null
  python3 -m ditlab psnr "$out/${r}_sr.npz" --data "$out/heldout60.npz" --factor 2
done
if [ -n "$test_zip" ]; then
  python3 - "$test_zip" "$out/test2k16.npz" <<'PY'
import io, sys, zipfile
import numpy as np
from PIL import Image
zf = zipfile.ZipFile(sys.argv[1])
names = sorted(n for n in zf.namelist() if not n.endswith("/"))
pick = np.random.default_rng(0).choice(len(names), 2000, replace=False)
images = []
for i in pick:
    a = np.asarray(Image.open(io.BytesIO(zf.read(names[i]))).convert("RGB"), dtype=np.float32)
    images.append(np.round(a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, 3).mean((1, 3))).astype(np.uint8))
np.savez(sys.argv[2], images=np.stack(images))
PY
  python3 -m ditlab fid ref "$out/test2k16.npz" --out "$out/ref16.npz" --inception "$inception" --device cpu \
    --no-progress > /dev/null
  for s in plain_sr healthy_sr heldout60; do
    python3 -m ditlab fid "$out/$s.npz" --ref "$out/ref16.npz" --inception "$inception" --device cpu --kid \
      --no-progress | tail -n 1
  done
fi

"""Do FID features depend on the CPU thread count? (issue 20)

Extracts Inception features of 500 CIFAR-10 test images and of 500 others with the thread count given,
prints the Frechet distance between the two sets and saves the features, so that two runs (e.g.
OMP_NUM_THREADS=1 and 2) can be compared feature by feature:

    OMP_NUM_THREADS=1 python scripts/fid_threads.py 1 cifar10-test.zip inception.pt OUT1.npz
    OMP_NUM_THREADS=2 python scripts/fid_threads.py 2 cifar10-test.zip inception.pt OUT2.npz
    python scripts/fid_threads.py compare OUT1.npz OUT2.npz
"""
import json
import sys
import time

import numpy as np
import torch


def extract(threads: int, data: str, inception: str, out: str) -> None:
    from ditlab.data import load_image_data
    from ditlab.eval import FeatureStats, extract_features, frechet_distance, load_inception

    torch.set_num_threads(threads)
    images = load_image_data(data, progress=False).images
    a, b = images[:500], images[5000:5500]
    net = load_inception(inception, "cpu")
    t0 = time.time()
    fa = extract_features(a, net, "cpu", batch_size=50, progress=False)
    fb = extract_features(b, net, "cpu", batch_size=50, progress=False)
    np.savez(out, a=fa, b=fb)
    fid = frechet_distance(FeatureStats.from_features(fa), FeatureStats.from_features(fb))
    print(json.dumps({"threads": threads, "fid_500_vs_500": fid, "seconds": round(time.time() - t0, 1)}))


def compare(first: str, second: str) -> None:
    x, y = np.load(first), np.load(second)
    for key in ("a", "b"):
        diff = np.abs(x[key].astype(np.float64) - y[key])
        print(json.dumps({"set": key, "max_abs_diff": float(diff.max()), "mean_abs_feature": float(np.abs(y[key]).mean()),
                          "fraction_bitwise_equal": float((x[key] == y[key]).mean())}))


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        extract(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])

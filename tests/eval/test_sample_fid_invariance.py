"""`ditlab sample` + `ditlab fid` on a run: the FID does not change when only the batch size does."""
import json

import numpy as np

from ditlab.cli import main

from .helpers import random_images, write_zip


def test_fid_of_a_run_is_batch_size_invariant(tmp_path, standin_path, capsys):
    data = tmp_path / "d.npz"
    np.savez(data, images=random_images(32, size=16), labels=np.arange(32) % 2)
    run = tmp_path / "run"
    assert main(["train", "configs/demo.yaml", f"data.path={data}", f"train.run_dir={run}", "train.steps=3",
                 "train.batch_size=8", "model.hidden_size=32", "model.depth=1", "model.num_heads=2",
                 "model.num_classes=2", "--no-progress"]) == 0
    ref = write_zip(tmp_path / "ref.zip", random_images(40, size=16, seed=1))
    fids = []
    for batch in (3, 8):
        out = tmp_path / f"s{batch}.npz"
        assert main(["sample", str(run), "--num", "20", "--steps", "3", "--sampler", "heun", "--cfg", "1.5",
                     "--batch-size", str(batch), "--out", str(out), "--device", "cpu"]) == 0
        capsys.readouterr()
        assert main(["fid", str(out), "--ref", str(ref), "--inception", str(standin_path), "--device", "cpu",
                     "--no-progress"]) == 0
        fids.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fid"])
    a, b = (np.load(tmp_path / f"s{n}.npz")["arr_0"].astype(int) for n in (3, 8))
    assert np.abs(a - b).max() <= 1  # the same samples, up to BLAS rounding
    assert abs(fids[0] - fids[1]) <= 1e-3 * max(fids[0], 1.0), fids

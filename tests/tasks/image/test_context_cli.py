"""Context sets end to end on the command line: make-demo on a folder of PNGs, train, sample with CFG."""
import json

import numpy as np
import pytest
from PIL import Image

from ditlab.cli import main

TINY = ["model.hidden_size=32", "model.depth=1", "model.num_heads=2", "train.steps=4", "train.batch_size=4",
        "train.log_every=2", "train.sample_every=4", "sample.grid_size=3", "sample.steps=2", "--no-progress"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("context")
    rng = np.random.default_rng(0)
    for cls in ("cat", "sea_lion"):
        (root / "data" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "data" / cls / f"{i}.png")
    ctx = root / "ctx.npz"
    assert main(["context", "make-demo", str(root / "data"), "--out", str(ctx), "--dim", "8", "--no-progress"]) == 0
    run = root / "run"
    assert main(["train", "configs/demo.yaml", f"data.path={root / 'data'}", f"data.context_path={ctx}",
                 f"train.run_dir={run}", "model.num_classes=2", "task.cond_dropout=0.2", *TINY]) == 0
    return root, ctx, run


def test_make_demo_writes_names_captions_and_labels(demo):
    _, ctx, _ = demo
    d = np.load(ctx)
    assert d["embeddings"].shape[::2] == (10, 8) and d["mask"].dtype == bool
    assert d["names"].tolist()[:2] == ["cat/0.png", "cat/1.png"] and "sea lion" in d["captions"][-1]
    assert d["labels"].tolist() == [0] * 5 + [1] * 5


def test_train_records_the_context_and_previews_it(demo):
    _, _, run = demo
    info = json.loads((run / "model.json").read_text())
    assert info["context_dim"] == 8 and info["context_source"].endswith("ctx.npz")
    assert (run / "samples" / "step_00000004.png").exists()


def test_sample_with_context_and_cfg(demo, tmp_path):
    _, ctx, run = demo
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--context", str(ctx), "--cfg", "2", "--num", "7", "--steps", "2",
                 "--batch-size", "3", "--out", str(out)]) == 0
    d = np.load(out)
    assert d["arr_0"].shape == (7, 16, 16, 3)
    assert d["arr_1"].tolist() == [0] * 5 + [1] * 2  # labels of the context rows, not i mod K


def test_sample_errors_name_what_is_missing(demo, tmp_path, capsys):
    root, ctx, run = demo
    assert main(["sample", str(run), "--num", "2", "--steps", "2", "--out", str(tmp_path / "s.npz")]) == 1
    assert "pass --context FILE" in capsys.readouterr().err
    assert main(["sample", str(run), "--context", str(ctx), "--num", "11", "--out", str(tmp_path / "s.npz")]) == 1
    assert "10 rows, fewer than --num 11" in capsys.readouterr().err
    wide = tmp_path / "wide.npz"
    assert main(["context", "make-demo", str(root / "data"), "--out", str(wide), "--dim", "4", "--no-progress"]) == 0
    assert main(["sample", str(run), "--context", str(wide), "--num", "2", "--out", str(tmp_path / "s.npz")]) == 1
    err = capsys.readouterr().err
    assert "key 'embeddings'" in err and "wide.npz" in err and "D=4, but the run" in err and "D=8" in err


def test_train_with_a_misaligned_context_file_fails_before_training(demo, tmp_path, capsys):
    root, _, _ = demo
    with open(tmp_path / "bad.npz", "wb") as f:
        np.savez(f, embeddings=np.zeros((10, 2, 8), np.float32), lengths=np.full(10, 2),
                 names=np.array([f"cat/{i}.png" for i in range(10)]))
    code = main(["train", "configs/demo.yaml", f"data.path={root / 'data'}",
                 f"data.context_path={tmp_path / 'bad.npz'}", f"train.run_dir={tmp_path / 'r'}", *TINY])
    assert code == 1
    assert "lacks 5 of the 10 images" in capsys.readouterr().err and not (tmp_path / "r" / "checkpoints").exists()


def test_make_demo_names_a_bad_flag(tmp_path, capsys):
    assert main(["context", "make-demo", "", "--out", str(tmp_path / "c.npz"), "--dim", "0", "--no-progress"]) == 1
    assert "--dim: must be >= 1" in capsys.readouterr().err and not (tmp_path / "c.npz").exists()

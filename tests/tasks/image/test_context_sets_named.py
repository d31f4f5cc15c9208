"""Image runs with several named context files (data.contexts): train and sample (issue 16 item 1)."""
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from ditlab.cli import main
from ditlab.data.context_sets import save_context_file
from tests.eval.conftest import standin_path  # noqa: F401  (the stand-in FID network fixture)

TINY = ["model.hidden_size=32", "model.depth=3", "model.num_heads=2", "train.steps=3", "train.batch_size=4",
        "train.log_every=1", "train.sample_every=3", "sample.grid_size=3", "sample.steps=2", "--no-progress"]


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("named")
    rng = np.random.default_rng(0)
    names = []
    for cls in ("a", "b"):
        (root / "data" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "data" / cls / f"{i}.png")
            names.append(f"{cls}/{i}.png")
    files = {}
    for name, (m, d) in {"text": (5, 6), "style": (3, 4)}.items():
        mask = rng.random((8, m)) < 0.7
        mask[0] = False  # an empty row: that set alone is "no context" for image 0
        files[name] = save_context_file(root / f"{name}.npz", rng.normal(size=(8, m, d)).astype(np.float32), mask,
                                        names=names[::-1] if name == "style" else names)
    run = root / "run"
    assert main(["train", "configs/demo.yaml", f"data.path={root / 'data'}", f"train.run_dir={run}",
                 f"data.contexts=[text={files['text']}, {{name: style, path: {files['style']}}}]",
                 "model.contexts=[{name: style, cfg_dropout: 0.3, blocks: middle}]", "task.cond_dropout=0.2",
                 *TINY]) == 0
    return root, files, run


def test_train_records_the_named_sets(two_sets):
    _, _, run = two_sets
    info = json.loads((run / "model.json").read_text())
    assert info["contexts"] == {"text": 6, "style": 4} and "context_dim" not in info
    from ditlab.runs import load_run

    loaded = load_run(run)
    assert [("style" in b.cross_sets) for b in loaded.model.blocks] == [False, True, False]
    assert [("text" in b.cross_sets) for b in loaded.model.blocks] == [True, True, True]
    assert loaded.task.context_sets == ("text", "style")


def test_sample_with_two_named_files_plain_cfg_and_composed(two_sets, tmp_path):
    _, files, run = two_sets
    outs = {}
    for key, flags in {"plain": [], "cfg": ["--cfg", "2"],
                       "composed": ["--cfg", "1.5", "--cfg-context", "text=2", "--cfg-context", "style=0.5"]}.items():
        out = tmp_path / f"{key}.npz"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["sample", str(run), "--context", f"text={files['text']}", "--context",
                         f"style={files['style']}", "--num", "5", "--steps", "2", "--batch-size", "2",
                         "--out", str(out), *flags]) == 0
        outs[key] = np.load(out)["arr_0"]
        assert outs[key].shape == (5, 16, 16, 3)
        # text has no model.contexts entry (cfg_dropout 0): guiding it alone warns; style (0.3) does not.
        untrained = [str(w.message) for w in caught if "never dropped it alone" in str(w.message)]
        assert bool(untrained) == (key == "composed") and all("'text'" in m for m in untrained)


def test_sample_errors_name_the_missing_or_unknown_set(two_sets, tmp_path, capsys):
    _, files, run = two_sets
    out = str(tmp_path / "s.npz")
    assert main(["sample", str(run), "--context", f"text={files['text']}", "--num", "2", "--out", out]) == 1
    assert "--context style=FILE" in capsys.readouterr().err
    assert main(["sample", str(run), "--context", f"text={files['text']}", "--context", f"style={files['style']}",
                 "--context", f"other={files['text']}", "--num", "2", "--out", out]) == 1
    assert "named context sets are" in capsys.readouterr().err
    assert main(["sample", str(run), "--context", f"text={files['text']}", "--context", f"style={files['style']}",
                 "--cfg-context", "nope=2", "--num", "2", "--out", out]) == 1
    assert "context sets are" in capsys.readouterr().err


def test_model_contexts_without_a_file_is_refused(two_sets, tmp_path, capsys):
    root, files, _ = two_sets
    assert main(["train", "configs/demo.yaml", f"data.path={root / 'data'}", f"train.run_dir={tmp_path / 'r'}",
                 f"data.contexts=[text={files['text']}]", "model.contexts=[{name: style}]", *TINY]) != 0
    assert "gives it no file" in capsys.readouterr().err


def test_fid_during_training_samples_on_the_held_out_rows_of_every_set(two_sets, tmp_path, standin_path,
                                                                       monkeypatch):
    """train.eval_metric=fid on a named-set run: the held-out images' rows of each set (and their labels)
    condition the samples; the run evaluates without error (it used to fail: no named set was passed)."""
    import math
    import warnings

    import torch

    from ditlab.config import load_config
    from ditlab.train import evaluation
    from ditlab.train.trainer import Trainer

    root, files, _ = two_sets
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DITLAB_INCEPTION", str(standin_path))
    cfg = load_config("configs/demo.yaml", [
        f"data.path={root / 'data'}", f"train.run_dir={tmp_path / 'r'}", "train.device=cpu",
        f"data.contexts=[text={files['text']}, style={files['style']}]", "model.hidden_size=32", "model.depth=2",
        "model.num_heads=2", "train.steps=2", "train.batch_size=4", "train.sample_every=0", "train.eval_every=2",
        "train.eval_metric=fid", f"train.eval_ref={root / 'data'}", "train.eval_num=4", "sample.steps=2"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stand-in's sha256 is not the real network's
        trainer = Trainer(cfg, progress=False)
        ctx = trainer.evaluator.ctx
        num, cond = evaluation.image_conditions(ctx)
        assert num == len(ctx.indices) == 4
        for name in ("text", "style"):
            rows = ctx.data.named_sets[name].rows(ctx.indices)
            assert torch.equal(cond[f"context__{name}"], rows.embeddings)
            assert torch.equal(cond[f"context_mask__{name}"], rows.mask)
        assert torch.equal(cond["labels"], ctx.data.data.labels[ctx.indices])
        assert trainer.run() == 0
    logged = [json.loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    assert any(math.isfinite(r.get("eval/fid", math.nan)) for r in logged)

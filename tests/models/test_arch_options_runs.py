"""The architecture options (issue 18) survive the run machinery: RUN/config.yaml records them, `ditlab sample`
(runs.load_run) rebuilds the same network from it, and a run written before the options existed loads with
their defaults."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from ditlab.cli import main
from ditlab.config import load_config
from ditlab.configlib import save_config
from ditlab.runs import load_run
from ditlab.tasks.registry import build_model
from ditlab.train.checkpoint import save_checkpoint

OPTIONS = ["model.mlp=swiglu", "model.norm=rmsnorm", "model.long_skips=true", "model.class_tokens=2",
           "model.label_in_adaln=false"]
NEW_KEYS = ("mlp", "norm", "long_skips", "class_tokens", "label_in_adaln")
TINY = ["model.arch=DiT-S/4", "model.hidden_size=32", "model.depth=3", "model.num_heads=2", "model.num_classes=3"]


def write_run(run, overrides, drop_keys=()):
    """A run directory as the trainer leaves it (config.yaml, model.json, one checkpoint), by hand; ``drop_keys``
    are removed from config.yaml's model section, as in a run written before they existed."""
    cfg = load_config(None, TINY + list(overrides))
    info = {"task": "image", "num_classes": 3, "image_size": 16, "channels": 3}
    torch.manual_seed(0)
    model = build_model(cfg, info)
    with torch.no_grad():  # leave the zero initialisation so that outputs tell weights apart
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_config(cfg, str(run / "config.yaml"))
    if drop_keys:
        saved = yaml.safe_load((run / "config.yaml").read_text())
        for k in drop_keys:
            del saved["model"][k]
        (run / "config.yaml").write_text(yaml.safe_dump(saved))
    (run / "model.json").write_text(json.dumps(info))
    save_checkpoint(run, 1, model, ema=model)
    return model.eval()


def outputs(model):
    g = torch.Generator().manual_seed(1)
    x, t = {"image": torch.randn(2, 3, 16, 16, generator=g)}, {"image": torch.rand(2, generator=g)}
    with torch.no_grad():
        return model(x, t, labels=torch.tensor([0, 2]), label_drop=torch.tensor([False, True]))["image"]


def test_options_round_trip_through_config_yaml_and_load_run(tmp_path):
    model = write_run(tmp_path, OPTIONS)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]
    assert {k: saved[k] for k in NEW_KEYS} == dict(mlp="swiglu", norm="rmsnorm", long_skips=True, class_tokens=2,
                                                    label_in_adaln=False)
    run = load_run(tmp_path)  # strict: every weight must fit the rebuilt model
    m = run.model
    assert (m.mlp_kind, m.norm_kind, m.num_class_tokens, m.label_in_adaln) == ("swiglu", "rmsnorm", 2, False)
    assert m.long_skips is not None
    assert torch.equal(outputs(m), outputs(model))


def test_a_run_from_before_the_options_loads_with_the_defaults(tmp_path):
    model = write_run(tmp_path, [], drop_keys=NEW_KEYS)
    assert not set(NEW_KEYS) & set(yaml.safe_load((tmp_path / "config.yaml").read_text())["model"])
    run = load_run(tmp_path)
    assert (run.cfg.model.mlp, run.cfg.model.norm, run.cfg.model.long_skips, run.cfg.model.class_tokens,
            run.cfg.model.label_in_adaln) == ("gelu", "layernorm", False, 0, True)
    assert torch.equal(outputs(run.model), outputs(model))


def test_weights_of_another_option_do_not_load(tmp_path):
    """A run whose config.yaml lost an option that changes the parameters is refused, not loaded half-way."""
    write_run(tmp_path, ["model.long_skips=true"], drop_keys=("long_skips",))
    with pytest.raises(RuntimeError, match="long_skips"):
        load_run(tmp_path)


def test_train_then_sample_with_every_option(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "configs/demo.yaml", f"train.run_dir={run}", *TINY, "model.num_classes=10", *OPTIONS, "train.steps=2",
                 "train.batch_size=4", "train.log_every=1", "train.sample_every=0", "train.ckpt_every=2",
                 "--no-progress"]) == 0
    loaded = load_run(run)
    assert loaded.model.num_class_tokens == 2 and loaded.model.mlp_kind == "swiglu"
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--num", "2", "--steps", "2", "--cfg", "2", "--out", str(out)]) == 0
    assert out.exists()

"""The compile-cache marker: which networks a machine has compiled, for ditlab ablate's set-up estimates."""
import json

import pytest
import torch

from ditlab.train.compile_cache import cache_state, compiled_before, inductor_cache_folder, mark_compiled, network_key
from ditlab.train.trainer import Trainer
from tests.train.test_trainer import tiny_cfg


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder))
    return folder


def test_the_key_ignores_what_no_compiled_graph_sees(tmp_path):
    """Another seed, run folder, time limit, sampler, GPU index (a worker of --gpus N trains on "cuda:K"), lr,
    optimizer or EMA compiles from the cache (the compiled graph is the loss); another network, batch, precision
    or objective is counted as new (an overcautious estimate at worst), and so is Muon's compiled update."""
    base = tiny_cfg("data", tmp_path / "a", "train.compile=true")
    same = tiny_cfg("other_data", tmp_path / "b", "train.compile=true", "train.seed=3", "train.time_limit=60",
                    "train.steps=7", "sample.steps=9", "train.log_every=5", "train.device=cuda:1", "optim.lr=2e-3",
                    "optim.name=muon", "ema.decay=0.99")
    assert network_key(base) == network_key(same)
    for change in ("model.depth=3", "train.batch_size=16", "train.precision=fp32", "diffusion.process=flow"):
        assert network_key(tiny_cfg("data", tmp_path / "a", "train.compile=true", change)) != network_key(base), change
    muon = tiny_cfg("data", tmp_path / "a", "train.compile=true", "optim.name=muon", "optim.muon_compile=default")
    assert network_key(muon) != network_key(base)


def test_markers_live_in_the_inductor_cache(cache, tmp_path, monkeypatch):
    assert inductor_cache_folder() == cache
    cfg = tiny_cfg("data", tmp_path / "r", "train.compile=true")
    assert cache_state(cfg) == "cold" and not compiled_before(network_key(cfg))
    mark_compiled(network_key(cfg))
    assert cache_state(cfg) == "warm" and (cache / "ditlab_compiled_networks" / network_key(cfg)).is_file()
    assert cache_state(tiny_cfg("data", tmp_path / "r", "train.compile=false")) == "off"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert inductor_cache_folder().name.startswith("torchinductor_")  # torch's default, per user


def test_an_unwritable_cache_folder_is_passed_over(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(blocker))
    mark_compiled("abc")  # no error: only an estimate is lost
    assert not compiled_before("abc")


def test_training_records_whether_the_network_was_compiled_here_before(tiny_data, cache, tmp_path, monkeypatch):
    """The first training of a network is cold, the next one of the same network (another seed) warm, another
    network cold again; compilation off says so; a resumed run cannot vouch for its earlier segments' set-up."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # the bookkeeping, not inductor, is tested

    def train(run, *extra, resume=False):
        assert Trainer(tiny_cfg(tiny_data, tmp_path / run, "train.steps=3", *extra), resume=resume,
                       progress=False).run() == 0
        return json.loads((tmp_path / run / "summary.json").read_text())

    assert train("off")["compile_cache"] == "off" and not list(cache.glob("ditlab_compiled_networks/*"))
    assert train("first", "train.compile=true")["compile_cache"] == "cold"
    assert train("second", "train.compile=true", "train.seed=1")["compile_cache"] == "warm"
    assert train("deeper", "train.compile=true", "model.depth=3")["compile_cache"] == "cold"
    resumed = tiny_cfg(tiny_data, tmp_path / "first", "train.steps=6", "train.compile=true")
    assert Trainer(resumed, resume=True, progress=False).run() == 0
    summary = json.loads((tmp_path / "first" / "summary.json").read_text())
    assert summary["compile_cache"] == "resumed" and summary["segment_compile_cache"] == "warm"
    assert compiled_before(network_key(resumed))

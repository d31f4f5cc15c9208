"""scripts/gpu_stage.py: every staging folder fits one device carry, and `take` in any order rebuilds the inputs
byte for byte (including ../shared's own .part.aa/.part.ab pieces, joined into one file)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.script_modules import load_script

INCEPTION = "inception-fid-torchscript.pt"


@pytest.fixture
def stage(monkeypatch):
    module = load_script("gpu_stage")
    # Byte-sized carries: the tree is ~3 kB, each folder gets 4,000 bytes of parts beside 2,000 of manifest.
    monkeypatch.setattr(module, "MIB", 1)
    monkeypatch.setattr(module, "MANIFEST_ROOM", 2000)
    monkeypatch.setattr(module, "CARRY_LIMIT", 9007)
    return module


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".gitignore").write_text(".gpu*/\n")  # 7 bytes
    (repo / "tracked.bin").write_bytes(os.urandom(3000))
    return repo


@pytest.fixture
def shared(tmp_path):
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    (shared / "fid").mkdir()
    files = {"data/cifar10-train.zip": 9000, "data/cifar10-test.zip": 1500,
             f"fid/{INCEPTION}.part.aa": 5000, f"fid/{INCEPTION}.part.ab": 4321}
    for name, size in files.items():
        (shared / name).write_bytes(os.urandom(size))
    return shared


def prepare(stage, repo, shared, *extra):
    assert stage.main(["prepare", "--repo", str(repo), "--shared", str(shared), "--margin-mib", "0", *extra]) == 0
    return sorted((repo / ".gpu_stage").iterdir())


def inception_bytes(shared):
    return (shared / "fid" / f"{INCEPTION}.part.aa").read_bytes() + (shared / "fid" / f"{INCEPTION}.part.ab").read_bytes()


def test_folders_fit_the_carry_and_take_rebuilds_every_input(tmp_path, stage, repo, shared):
    folders = prepare(stage, repo, shared)
    assert [f.name for f in folders] == ["1", "2", "3", "4", "5"]  # 19,821 bytes at 4,000 a folder
    for folder in folders:
        parts = sum(p.stat().st_size for p in folder.iterdir() if p.name != stage.MANIFEST)
        assert parts <= 4000 and parts + (folder / stage.MANIFEST).stat().st_size <= 9007 - 3007
    cache = tmp_path / "cache"
    for folder in reversed(folders):  # any order
        assert stage.main(["take", str(folder), "--cache", str(cache)]) == 0
    data = shared / "data"
    assert (cache / "cifar10-train.zip").read_bytes() == (data / "cifar10-train.zip").read_bytes()
    assert (cache / "cifar10-test.zip").read_bytes() == (data / "cifar10-test.zip").read_bytes()
    assert (cache / INCEPTION).read_bytes() == inception_bytes(shared)
    assert sorted(p.name for p in cache.iterdir()) == ["cifar10-test.zip", "cifar10-train.zip", INCEPTION]


def test_need_exits_3_until_the_file_is_whole_and_taking_again_leaves_no_parts(tmp_path, stage, repo, shared):
    folders = prepare(stage, repo, shared)
    cache = tmp_path / "cache"
    take = ["--cache", str(cache), "--need", "cifar10-train.zip"]
    # the train zip (9,000 bytes) spans folders 1-3
    assert stage.main(["take", str(folders[1]), *take]) == 3  # a fresh machine: folder 1 never arrived
    assert stage.main(["take", str(folders[0]), *take]) == 3
    assert stage.main(["take", str(folders[2]), *take]) == 0
    assert stage.main(["take", str(folders[0]), *take]) == 0  # carried again after the join
    assert not [p for p in cache.iterdir() if ".stage" in p.name and p.name.startswith("cifar10-train")]
    with pytest.raises(SystemExit, match="not staged"):
        stage.main(["take", str(folders[0]), "--cache", str(cache), "--need", "nope.zip"])


def test_a_truncated_file_in_the_cache_is_joined_again(tmp_path, stage, repo, shared):
    folders = prepare(stage, repo, shared)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "cifar10-test.zip").write_bytes(b"short")  # left by an earlier, interrupted session
    for folder in folders:
        stage.main(["take", str(folder), "--cache", str(cache)])
    assert (cache / "cifar10-test.zip").read_bytes() == (shared / "data" / "cifar10-test.zip").read_bytes()


def test_a_corrupt_part_is_refused_the_parts_kept_and_the_other_files_joined(tmp_path, stage, repo, shared, capsys):
    folders = prepare(stage, repo, shared)
    first = next(p for p in folders[0].iterdir() if p.name.startswith("cifar10-train"))
    data = first.read_bytes()
    first.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # a byte that surely differs
    cache = tmp_path / "cache"
    codes = [stage.main(["take", str(folder), "--cache", str(cache)]) for folder in folders]
    assert codes[2] == 1  # the train zip's last part arrives in folder 3 (4,000 + 4,000 + 1,000 bytes)
    err = capsys.readouterr().err
    assert "cifar10-train.zip: the joined parts' sha256 differs" in err and "folders [1, 2, 3]" in err
    assert not (cache / "cifar10-train.zip").exists()
    assert any(p.name.startswith("cifar10-train.zip.stage") for p in cache.iterdir())
    assert (cache / INCEPTION).read_bytes() == inception_bytes(shared)  # later files still joined


def test_pieces_join_in_name_order_whatever_the_order_given(tmp_path, stage, repo, shared):
    fid = shared / "fid"
    folders = prepare(stage, repo, shared, str(fid / f"{INCEPTION}.part.ab"), str(fid / f"{INCEPTION}.part.aa"))
    manifest = json.loads((folders[0] / stage.MANIFEST).read_text())
    assert [p["name"] for p in manifest["files"][INCEPTION]["pieces"]] == [f"{INCEPTION}.part.aa",
                                                                           f"{INCEPTION}.part.ab"]
    cache = tmp_path / "cache"
    for folder in folders:
        stage.main(["take", str(folder), "--cache", str(cache)])
    assert (cache / INCEPTION).read_bytes() == inception_bytes(shared)


@pytest.mark.parametrize("out", [".", "..", "staging"])
def test_out_must_be_an_ignored_folder_inside_the_checkout(stage, repo, shared, out):
    with pytest.raises(SystemExit, match="--out"):
        stage.main(["prepare", "--repo", str(repo), "--shared", str(shared), "--out", out])
    assert (repo / "tracked.bin").exists()


def test_a_working_tree_too_big_to_stage_beside_is_an_error(stage, repo, shared, monkeypatch):
    monkeypatch.setattr(stage, "CARRY_LIMIT", 3100)
    with pytest.raises(SystemExit, match="working tree"):
        stage.main(["prepare", "--repo", str(repo), "--shared", str(shared)])


def test_give_over_several_calls_and_gather_rebuild_the_file(tmp_path, stage, monkeypatch, capsys):
    """A file bigger than one call brings back: each call writes its share of the parts (never more than the
    call may return), gather joins them in any order of folders, and names the calls still missing."""
    monkeypatch.setattr(stage, "GIVE_PART", 1000)
    monkeypatch.setattr(stage, "GIVE_PARTS_PER_CALL", 2)
    src = tmp_path / "run.tar"
    src.write_bytes(os.urandom(4500))  # 5 parts: calls 1, 2, 3
    outs = [tmp_path / f"out{k}" for k in (1, 2, 3)]
    for k, out in enumerate(outs, start=1):
        assert stage.main(["give", str(src), str(out), "--call", str(k)]) == 0
        files = sorted(p.name for p in out.iterdir())
        assert len(files) <= 3 and "run.tar.give.json" in files  # two parts and the manifest
    assert stage.main(["give", str(src), str(tmp_path / "out4"), "--call", "4"]) == 2
    joined = tmp_path / "joined.tar"
    assert stage.main(["gather", str(outs[2]), str(outs[0]), "--out", str(joined)]) == 3
    assert "give --call 2" in capsys.readouterr().err and not joined.exists()
    assert stage.main(["gather", str(outs[2]), str(outs[0]), str(outs[1]), "--out", str(joined)]) == 0
    assert joined.read_bytes() == src.read_bytes()


def test_gather_refuses_a_corrupt_part(tmp_path, stage, monkeypatch, capsys):
    monkeypatch.setattr(stage, "GIVE_PART", 1000)
    src = tmp_path / "run.tar"
    src.write_bytes(os.urandom(2500))
    out = tmp_path / "out"
    assert stage.main(["give", str(src), str(out), "--call", "1"]) == 0
    part = out / "run.tar.give001"
    data = part.read_bytes()  # flip the first byte's bits: writing b"x" left a part whose byte was "x" whole (1 in 256)
    part.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    assert stage.main(["gather", str(out), "--out", str(tmp_path / "joined")]) == 1
    assert "run.tar.give001" in capsys.readouterr().err and not (tmp_path / "joined").exists()

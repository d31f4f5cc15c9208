"""`ditlab sample RUN` for every task kind on tiny CPU runs, and bad input on every subcommand.

For each kind: the arrays of its .npz layout, their shapes, the metadata, and the same output for
batch sizes 3 and 7 (noise per sample index). Then a table of bad inputs (issue 15, item 6): each one
against every subcommand that takes it ends with exit code 1 and one line naming the flag or key,
never a traceback.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from ditlab.cli import main

TINY = ["model.hidden_size=16", "model.depth=1", "model.num_heads=2", "train.steps=2", "train.batch_size=4",
        "train.device=cpu", "train.sample_every=0", "train.log_every=1"]
# icl_small is the one DDPM preset here: its T (a flow run refuses diffusion.num_timesteps)
ICL = ["task.kind=icl", "icl.d=3", "icl.n_points=5", "icl.d_start=0", "icl.eval_prompts=4", "diffusion.num_timesteps=50"]
SCENE = ["scene.num_scenes=8", "scene.num_target_points=6", "scene.points_per_object=[4,8]", "scene.eval_scenes=8",
         "scene.target_pool=16"]


def images(tmp_path, n=16, size=8):
    path = tmp_path / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), labels=np.arange(n) % 2)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny trained run per task kind."""
    root = tmp_path_factory.mktemp("kinds")
    data = images(root)
    specs = {
        "image": ["configs/demo.yaml", "task.kind=image", "model.arch=DiT-S/4", "model.num_classes=2"],
        "superres": ["configs/demo.yaml", "task.kind=superres", "model.arch=DiT-S/2", "model.num_classes=0"],
        "lift": ["configs/demo.yaml", "task.kind=lift", "model.arch=DiT-S/2", "model.num_classes=0",
                 "sample.cfg_scale=1"],
        "icl": ["configs/icl_small.yaml", *ICL, "train.compile=false", "train.time_limit=0"],
        "scene": ["configs/scene_small.yaml", *SCENE],
    }
    out = {}
    for kind, (config, *overrides) in specs.items():
        run = root / kind
        extra = [f"data.path={data}"] if kind in ("image", "superres", "lift") else []
        code = main(["train", config, *overrides, *TINY, *extra, f"train.run_dir={run}", "--no-progress"])
        assert code == 0, kind
        out[kind] = run
    out["data"] = data
    return out


LAYOUT = {  # kind -> {array: shape for 7 samples}, from the tiny runs above
    "image": {"arr_0": (7, 8, 8, 3), "arr_1": (7,)},
    "superres": {"arr_0": (7, 8, 8, 3)},
    "lift": {"arr_0": (7, 8, 8, 3)},
    "icl": {"x": (7, 5, 3), "y": (7, 5), "y_sampled": (7, 5)},
    "scene": {"points": (7, 6, 3), "scene_mask": (7, None), "scene_features": (7, None, 4)},
}


@pytest.mark.parametrize("kind", list(LAYOUT))
def test_sample_writes_the_kinds_arrays_and_metadata_whatever_the_batch(runs, kind, tmp_path, capsys):
    extra = ["--data", str(runs["data"])] if kind == "superres" else []
    extra += ["--path", "lo-first"] if kind == "lift" else []
    arrays = {}
    for batch in (3, 7):
        out = tmp_path / f"b{batch}.npz"
        assert main(["sample", str(runs[kind]), "-n", "7", "--steps", "2", "--sampler", "ddim", "--seed", "5",
                     "--batch-size", str(batch), "--out", str(out), *extra]) == 0
        with np.load(out) as z:
            arrays[batch] = {k: z[k] for k in z.files}
    for key, shape in LAYOUT[kind].items():
        got = arrays[7][key].shape
        assert len(got) == len(shape) and all(s is None or s == g for s, g in zip(shape, got)), (key, got)
        np.testing.assert_allclose(arrays[3][key].astype(np.float64), arrays[7][key].astype(np.float64), atol=1.01)
    meta = json.loads(str(arrays[7]["ditlab_meta"]))
    assert meta["task"] == kind and meta["seed"] == 5 and meta["sampler"] == "ddim" and meta["steps"] == 2
    assert meta["checkpoint"].endswith("step_00000002") and meta["num"] == 7
    assert meta["path"] == ("lo-first" if kind == "lift" else None)
    assert meta["factor"] == (2 if kind in ("superres", "lift") else None)


def test_sample_defaults_to_a_file_inside_the_run(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(runs["image"]), "-n", "2", "--steps", "2", "--checkpoint", "step_00000002"]) == 0
    assert list(tmp_path.iterdir()) == []  # nothing in the working directory
    written = sorted((runs["image"] / "samples").glob("step_00000002_*_seed0.npz"))
    assert len(written) == 1 and json.loads(str(np.load(written[0])["ditlab_meta"]))["task"] == "image"


def test_psnr_and_fid_check_what_they_are_given(runs, tmp_path, capsys):
    sr = tmp_path / "sr.npz"
    assert main(["sample", str(runs["superres"]), "-n", "3", "--steps", "2", "--data", str(runs["data"]),
                 "--out", str(sr)]) == 0
    capsys.readouterr()
    assert main(["psnr", str(sr), "--data", str(runs["data"])]) == 0  # the factor comes from the metadata
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["factor"] == 2
    plain = tmp_path / "plain.npz"
    assert main(["sample", str(runs["image"]), "-n", "3", "--steps", "2", "--out", str(plain)]) == 0
    capsys.readouterr()
    assert main(["psnr", str(plain), "--data", str(runs["data"])]) == 1  # unconditional samples
    assert "task.kind=image" in capsys.readouterr().err
    points = tmp_path / "points.npz"
    assert main(["sample", str(runs["scene"]), "-n", "2", "--steps", "2", "--out", str(points)]) == 0
    capsys.readouterr()
    assert main(["fid", str(points), "--ref", str(runs["data"])]) == 1
    assert "task.kind=scene" in capsys.readouterr().err


def bad_inputs(runs, tmp_path):
    """(command line, what the one-line error must name)."""
    image, sr, lift, icl = (str(runs[k]) for k in ("image", "superres", "lift", "icl"))
    data = str(runs["data"])
    empty = tmp_path / "empty_run"
    empty.mkdir()
    for name in ("config.yaml", "model.json"):
        (empty / name).write_text((runs["image"] / name).read_text())
    train = ["train", "configs/demo.yaml", f"data.path={data}", f"train.run_dir={tmp_path / 't'}", "--no-progress"]
    cases = []
    for flag in ("--num", "--steps", "--batch-size"):
        for value in ("0", "-3"):
            cases.append((["sample", image, flag, value], flag))
    cases += [
        (["sample", image, "--grid-num", "0"], "--grid-num"),
        (["bench", "sample", image, "--num", "0"], "--num"),
        (["bench", "sample", image, "--batch-size", "0"], "--batch-size"),
        (["bench", "sample", image, "--steps", "0"], "--steps"),
        (["icl", "eval", icl, "--prompts", "0"], "--prompts"),
        (["icl", "eval", icl, "--steps", "0"], "--steps"),
        (["icl", "eval", icl, "--batch-size", "0"], "--batch-size"),
        (["scene", "eval", str(runs["scene"]), "--steps", "0"], "--steps"),
        (["scene", "eval", str(runs["scene"]), "--batch-size", "0"], "--batch-size"),
        (["lift", "errors", lift, "--data", data, "--num", "0"], "--num"),
        (["lift", "errors", lift, "--data", data, "--batch-size", "0"], "--batch-size"),
        (["lift", "paths", lift, "--steps", "0"], "--steps"),
        (["diagnose", "collapse", sr, "--data", data, "--steps", "0"], "--steps"),
        (["diagnose", "collapse", sr, "--data", data, "--num-seeds", "0"], "--num-seeds"),
        (["fid", data, "--ref", data, "--batch-size", "0"], "--batch-size"),
        ([*train, "train.batch_size=0"], "train.batch_size"),
        ([*train, "train.steps=0"], "train.steps"),
        ([*train, "optim.lr=-1"], "optim.lr"),
        ([*train, "optim.lr=nan"], "optim.lr"),
        ([*train, "optim.lr=inf"], "optim.lr"),
        (["config", "show", "configs/demo.yaml", "train.batch_size=-1"], "train.batch_size"),
        (["bench", "train", "configs/demo.yaml", "train.batch_size=0"], "train.batch_size"),
        (["sample", image, "--sampler", "euler", "--eta", "0.5"], "--eta"),
        (["sample", image, "--sampler", "ddim", "--eta", "2"], "--eta"),
        (["sample", image, "--data", data], "--data"),
        (["sample", image, "--path", "diagonal"], "--path"),
        (["sample", sr, "--path", "lo-first", "--data", data], "--path"),
        (["sample", icl, "--data", data], "--data"),
        (["sample", sr], "--data"),
        (["sample", lift, "--path", "lo-oracle"], "--data"),
        (["sample", lift, "--path", "zigzag"], "--path"),
        (["sample", str(empty)], "no complete checkpoint"),
        (["sample", image, "--checkpoint", "step_00000999"], "--checkpoint"),
        (["sample", str(tmp_path / "missing_run")], "not a ditlab run directory"),
        (["sample", image, "--cfg", "nan"], "--cfg"),
        (["sample", image, "--bogus"], "--bogus"),
        (["icl", "eval", image], "task.kind=icl"),
        (["scene", "eval", image], "task.kind=scene"),
        (["diagnose", "collapse", image, "--data", data], "task.kind=superres"),
        (["diagnose", "collapse", sr], "--data"),
        (["lift", "errors", lift], "--data"),
    ]
    return cases


def test_every_bad_input_is_one_line_with_exit_code_1(runs, tmp_path, capsys):
    failures = []
    for argv, named in bad_inputs(runs, tmp_path):
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("ditlab: error")]
        if code != 1 or "Traceback" in err or not lines or named not in lines[-1]:
            failures.append((argv[:2] + argv[-2:], code, err[-300:]))
    assert failures == []


def test_time_shift_and_guidance_interval_reach_the_samples_and_their_name(runs, capsys):
    assert main(["sample", str(runs["image"]), "-n", "2", "--steps", "2", "--checkpoint", "step_00000002",
                 "--cfg", "2", "--cfg-interval", "0.3", "4", "--time-shift", "2"]) == 0
    written = runs["image"] / "samples" / "step_00000002_heun2_cfg2_i0.3-4_ts2_seed0.npz"
    meta = json.loads(str(np.load(written)["ditlab_meta"]))
    assert meta["time_shift"] == 2 and meta["cfg_interval"] == [0.3, 4]
    assert main(["sample", str(runs["image"]), "-n", "2", "--steps", "2", "--time-shift", "0"]) == 1
    assert "--time-shift" in capsys.readouterr().err

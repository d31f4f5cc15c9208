"""The command line end to end on a tiny CPU run: train, sample (npz + grid), config show, report."""
import numpy as np
import pytest
import yaml

from ditlab.cli import main


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    data = root / "d.npz"
    np.savez(data, images=rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8), labels=np.arange(32) % 2)
    run = root / "run"
    code = main(["train", "configs/demo.yaml", f"data.path={data}", f"train.run_dir={run}", "train.steps=4",
                 "train.batch_size=8", "model.hidden_size=32", "model.depth=1", "model.num_heads=2",
                 "model.num_classes=2", "train.log_every=2", "train.sample_every=2", "sample.grid_size=4",
                 "sample.steps=2", "--no-progress"])
    assert code == 0
    return run


def test_train_writes_run_directory(trained_run):
    for name in ("config.yaml", "model.json", "metrics.jsonl", "summary.json", "checkpoints/latest",
                 "samples/step_00000002.png", "samples/step_00000004.png"):
        assert (trained_run / name).exists(), name
    cfg = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert cfg["train"]["steps"] == 4 and cfg["model"]["hidden_size"] == 32
    assert list((trained_run / "tb").iterdir())


def test_sample_npz_and_grid(trained_run, tmp_path):
    out, grid = tmp_path / "s.npz", tmp_path / "g.png"
    assert main(["sample", str(trained_run), "--num", "5", "--steps", "2", "--sampler", "euler", "--cfg", "1.5",
                 "--out", str(out), "--grid", str(grid), "--batch-size", "2"]) == 0
    d = np.load(out)
    assert d["arr_0"].shape == (5, 16, 16, 3) and d["arr_0"].dtype == np.uint8
    assert d["arr_1"].tolist() == [0, 1, 0, 1, 0]
    assert grid.stat().st_size > 0


def test_report(trained_run):
    assert main(["report", str(trained_run)]) == 0
    assert "loss" in (trained_run / "report.md").read_text() and (trained_run / "loss.png").exists()


def test_config_show_and_errors(capsys):
    assert main(["config", "show", "configs/demo.yaml", "optim.lr=0.5"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out
    assert main(["config", "show", "configs/demo.yaml", "optim.lrr=0.5"]) == 1
    assert "did you mean 'optim.lr'" in capsys.readouterr().err
    assert main(["config", "show", "train.steps=abc"]) == 1
    assert "train.steps" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "configs/demo.yaml", f"data.path={tmp_path}/nope", f"train.run_dir={tmp_path}/r",
                 "--no-progress"])
    assert code == 1 and "nope" in capsys.readouterr().err


def test_bench_train_and_sample_json(trained_run, capsys, tmp_path):
    import json

    data = tmp_path / "d.npz"
    np.savez(data, images=np.zeros((16, 16, 16, 3), dtype=np.uint8), labels=np.arange(16) % 2)
    assert main(["bench", "train", "configs/demo.yaml", f"data.path={data}", "train.batch_size=8",
                 "model.hidden_size=32", "model.depth=1", "model.num_heads=2", "model.num_classes=2",
                 "--warmup", "1", "--steps-per-repeat", "2", "--repeats", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["images_per_s"] > 0 and out["train_gflops_per_image"] > 0 and len(out["repeats_images_per_s"]) == 2
    assert main(["bench", "sample", str(trained_run), "-n", "4", "--batch-size", "4", "--steps", "2",
                 "--sampler", "euler", "--repeats", "1", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["nfe"] == 2 and out["images_per_s"] > 0 and out["precision"] == "fp32"  # no autocast on the CPU
    first = sorted(p.name for p in (trained_run / "checkpoints").glob("step_*"))[0]
    assert main(["bench", "sample", str(trained_run), "-n", "2", "--batch-size", "2", "--steps", "1",
                 "--sampler", "euler", "--repeats", "1", "--device", "cpu", "--checkpoint", first,
                 "--weights", "model"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["checkpoint"] == str(trained_run / "checkpoints" / first)


def test_ctrl_c_while_sampling_writes_nothing(trained_run, tmp_path, capsys, monkeypatch):
    import ditlab.generation as sampling

    real = sampling.generate_batch
    calls = []

    def interrupted(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "generate_batch", interrupted)
    out = tmp_path / "s.npz"
    assert main(["sample", str(trained_run), "--num", "6", "--batch-size", "2", "--steps", "1", "--sampler", "euler",
                 "--out", str(out), "--grid", str(tmp_path / "g.png")]) == 130
    assert "after 2 of 6 samples" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no partial npz, no grid, no temp files


def test_train_overrides_may_follow_flags(monkeypatch):
    """`ditlab train CONFIG --no-progress key=value` keeps the override (argparse alone rejects it)."""
    from ditlab import cli

    seen = {}
    parser = cli.build_parser()
    for action in parser._subparsers._group_actions:  # record the overrides instead of training
        for sub in action.choices.values():
            sub.set_defaults(func=lambda a: seen.__setitem__("overrides", a.overrides) or 0)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    cli.main(["train", "configs/demo.yaml", "optim.lr=1e-3", "--no-progress", "train.steps=5"])
    assert seen["overrides"] == ["optim.lr=1e-3", "train.steps=5"]
    # --set is the same as a positional override
    cli.main(["train", "configs/demo.yaml", "optim.lr=1e-3", "--set", "train.steps=7"])
    assert seen["overrides"] == ["optim.lr=1e-3", "train.steps=7"]
    # a flag argparse does not know is still an error: exit code 1, one line naming it
    assert cli.main(["train", "configs/demo.yaml", "--no-progress", "--bogus"]) == 1


def test_every_option_of_every_subcommand_has_help():
    import argparse

    from ditlab.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                yield f"{path} {'/'.join(action.option_strings) or action.dest}"

    assert list(walk(build_parser(), "ditlab")) == []


def test_sample_refuses_options_that_would_change_nothing(trained_run, tmp_path, capsys):
    """--cfg-interval without guidance and --grid-num without --grid are errors, not silently ignored."""
    out = tmp_path / "s.npz"
    base = ["sample", str(trained_run), "--num", "2", "--steps", "1", "--sampler", "euler", "--out", str(out)]
    assert main(base + ["--cfg", "1", "--cfg-interval", "0.2", "5"]) == 1
    assert "--cfg-interval applies when guiding" in capsys.readouterr().err
    assert main(base + ["--grid-num", "4"]) == 1
    assert "--grid-num applies with --grid" in capsys.readouterr().err
    assert not out.exists()
    assert main(base + ["--cfg", "1.5", "--cfg-interval", "0.2", "5", "--grid", str(tmp_path / "g.png"),
                        "--grid-num", "2"]) == 0


def test_sample_no_progress(trained_run, tmp_path, capsys):
    """`ditlab sample --no-progress`, as in train and fid: no progress bar on stderr."""
    out = tmp_path / "s.npz"
    assert main(["sample", str(trained_run), "--num", "2", "--steps", "1", "--sampler", "euler", "--out", str(out),
                 "--no-progress"]) == 0
    assert "sampling" not in capsys.readouterr().err and out.exists()


def test_weights_with_a_safetensors_checkpoint_is_an_error(trained_run, tmp_path, capsys):
    """--weights picks ema/model of a checkpoint folder; a bare .safetensors file is loaded as it is, so a
    --weights beside it would be ignored: an error instead (sample, scene eval, icl eval, lift errors)."""
    import json

    file = trained_run / "checkpoints" / "step_00000004" / "model.safetensors"
    out = tmp_path / "s.npz"
    base = ["sample", str(trained_run), "--num", "2", "--steps", "1", "--sampler", "euler", "--out", str(out)]
    assert main(base + ["--checkpoint", str(file), "--weights", "ema"]) == 1
    assert "--weights ema picks the weights of a checkpoint folder" in capsys.readouterr().err
    assert main(base + ["--checkpoint", str(file)]) == 0
    assert json.loads(str(np.load(out)["ditlab_meta"]))["weights"] is None  # the file's own weights
    assert main(base + ["--weights", "model"]) == 0
    assert json.loads(str(np.load(out)["ditlab_meta"]))["weights"] == "model"
    assert main(base) == 0
    assert json.loads(str(np.load(out)["ditlab_meta"]))["weights"] == "ema"


def test_bench_train_with_a_synthetic_context_set(capsys):
    """ditlab.bench's random data and context files (scripts/bench_train.py and profile_train.py --context-tokens)
    make a context-set model train: the context's rows reach the model (the FLOP count grows with them)."""
    import json

    from ditlab.bench import write_random_context, write_random_npz

    data = write_random_npz(num=16, image_size=16, num_classes=2)
    flops = {}
    for tokens in (0, 7):
        extra = [f"data.context_path={write_random_context(16, tokens, 24)}"] if tokens else []
        assert main(["bench", "train", "configs/demo.yaml", f"data.path={data}", "train.batch_size=8",
                     "model.hidden_size=32", "model.depth=1", "model.num_heads=2", "model.num_classes=2", *extra,
                     "--warmup", "1", "--steps-per-repeat", "1", "--repeats", "1"]) == 0
        flops[tokens] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["train_gflops_per_image"]
    assert flops[7] > flops[0] > 0


def test_bench_train_steps_is_a_deprecated_alias(monkeypatch, capsys):
    """bench train's --steps (training steps per repeat, not a sampler's steps) is now --steps-per-repeat."""
    from ditlab import cli

    args = cli.parse_args(cli.build_parser(), ["bench", "train", "configs/demo.yaml", "--steps", "3"])
    assert args.steps_per_repeat == 3
    assert "--steps is deprecated; use --steps-per-repeat" in capsys.readouterr().err
    args = cli.parse_args(cli.build_parser(), ["bench", "train", "configs/demo.yaml", "--steps-per-repeat", "4"])
    assert args.steps_per_repeat == 4


def test_ablate_device_beside_worker_devices_or_plan_is_an_error(tmp_path, monkeypatch, capsys):
    """`ablate --devices cpu,cpu --device cuda:1`: the workers run on --devices, so a --device outside them
    would be ignored; --plan runs nothing, so --device is refused there like --gpus."""
    import ditlab.experiments.ablation_parallel as par

    monkeypatch.setattr(par, "run_parallel", lambda *a, **k: 0)  # nothing is trained here
    base = ["ablate", "configs/ablations/lift.yaml", "--out", str(tmp_path / "out"), "--ref", str(tmp_path / "r.npz")]
    assert main(base + ["--devices", "cpu,cpu", "--device", "cuda:1"]) == 1
    assert "--device cuda:1 is not one of the workers' devices cpu,cpu" in capsys.readouterr().err
    assert main(base + ["--devices", "cpu,cpu", "--device", "cpu"]) == 0  # agrees with the workers: accepted
    assert main(["ablate", "configs/ablations/lift.yaml", "--out", str(tmp_path / "out"), "--plan",
                 "--device", "cpu"]) == 1
    refused = "--plan takes the file, --out, --only, --stage, --seeds and --rates-from; --device applies to running it"
    assert refused in capsys.readouterr().err
    assert main(["ablate", "configs/ablations/lift.yaml", "--out", str(tmp_path / "out"), "--plan",
                 "--compile", "on"]) == 1
    assert "--rates-from; --compile applies to running it" in capsys.readouterr().err
    assert main(["ablate", "configs/ablations/lift.yaml", "--out", str(tmp_path / "out"), "--plan",
                 "--machine-left-s", "900"]) == 1
    assert "--rates-from; --machine-left-s applies to running it" in capsys.readouterr().err
    assert main(["ablate", "configs/ablations/lift.yaml", "--out", str(tmp_path / "out"), "--plan", "--ref", "r.npz",
                 "--set", "optim.lr=1e-3"]) == 1  # --plan never read them: refused, not ignored
    assert "--rates-from; --ref, --set apply to running it" in capsys.readouterr().err
    for extra, named in ((["--ref", "r.npz"], "--ref does"), (["--only", "joint", "--set", "a=1"], "--only, --set do"),
                         (["--plan"], "--plan does"), (["--gpus", "2"], "--gpus does")):
        assert main(["ablate", "configs/ablations/lift.yaml", "--out", str(tmp_path), "--report", *extra]) == 1
        assert f"--report takes the file, --out and --stage; {named} not apply to it" in capsys.readouterr().err
    assert main(["ablate", "configs/ablations/lift.yaml", "--out", str(tmp_path), "--report", "--seeds", "2"]) == 1
    assert "--seeds does not apply to it" in capsys.readouterr().err  # --plan takes it (the units it plans)
    assert main(["ablate", "configs/ablations/lift.yaml", "--out", str(tmp_path / "nowhere"), "--report"]) == 1
    assert "nowhere does not exist: no score files to report" in capsys.readouterr().err
    assert main(base + ["--machine-left-s", "-5"]) == 1
    assert "--machine-left-s -5: seconds" in capsys.readouterr().err
    assert main(["ablate", "configs/ablations/lift.yaml", "--out", str(tmp_path / "out"), "--plan",
                 "--deadline-s", "500"]) == 1
    assert "--rates-from; --deadline-s applies to running it" in capsys.readouterr().err
    assert main(base + ["--deadline-s", "-1"]) == 1
    assert "--deadline-s -1: seconds" in capsys.readouterr().err


def test_sample_out_naming_a_folder_is_an_error(trained_run, tmp_path, capsys):
    """--out is a folder for the evaluations but one .npz file here: a folder used to become FOLDER.npz beside it."""
    folder = tmp_path / "samples"
    folder.mkdir()
    assert main(["sample", str(trained_run), "--num", "2", "--steps", "1", "--sampler", "euler",
                 "--out", str(folder)]) == 1
    assert f"--out {folder}: is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"] and not list(folder.iterdir())


def test_fast_kernels_of_a_loaded_run_follow_its_training_and_the_flag(trained_run, tmp_path, capsys, monkeypatch):
    """A loaded run uses the fused kernels where it trained with them (its in-training evaluations did):
    load_run asks for "auto" unless the run trained with "off" ("on" becomes "auto", so the run still loads
    on a CPU); `ditlab sample --fast-kernels` overrides it, and its errors name the flag."""
    import json

    import ditlab.runs as runs

    asked = []
    real = runs.configure_fast_kernels
    monkeypatch.setattr(runs, "configure_fast_kernels", lambda m, mode, dev: asked.append(mode) or real(m, mode, dev))
    assert runs.load_run(trained_run).cfg.train.fast_kernels == "off" and asked == ["off"]
    on = tmp_path / "on"
    shutil_copy(trained_run, on)
    cfg = yaml.safe_load((on / "config.yaml").read_text())
    cfg["train"]["fast_kernels"] = "on"
    (on / "config.yaml").write_text(yaml.safe_dump(cfg))
    run = runs.load_run(on)  # on a CPU: no error, the eager path
    assert asked[-1] == "auto" and not any(getattr(m, "fast_kernels", False) for m in run.model.modules())

    out = tmp_path / "s.npz"
    base = ["sample", str(trained_run), "--num", "2", "--steps", "1", "--sampler", "euler", "--out", str(out),
            "--device", "cpu"]
    assert main(base + ["--fast-kernels", "on"]) == 1
    assert "--fast-kernels on needs a CUDA device" in capsys.readouterr().err and not out.exists()
    assert main(base + ["--fast-kernels", "auto"]) == 0
    meta = json.loads(str(np.load(out)["ditlab_meta"]))
    assert meta["fast_kernels"] is False and meta["precision"] == "fp32"  # the path taken, recorded
    assert main(["bench", "sample", str(trained_run), "-n", "2", "--batch-size", "2", "--steps", "1", "--sampler",
                 "euler", "--repeats", "1", "--device", "cpu", "--fast-kernels", "off"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fast_kernels"] is False


def shutil_copy(src, dst):
    import shutil

    shutil.copytree(src, dst)


def test_train_with_fast_kernels_on_without_cuda_is_one_line_before_the_data(tmp_path, capsys):
    data = tmp_path / "missing.npz"  # never read: the setting fails first
    code = main(["train", "configs/demo.yaml", f"data.path={data}", f"train.run_dir={tmp_path / 'run'}",
                 "train.steps=1", "train.batch_size=4", "model.hidden_size=32", "model.depth=1", "model.num_heads=2",
                 "model.num_classes=2", "train.fast_kernels=on", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "train.fast_kernels=on needs a CUDA device" in err and "Traceback" not in err


def test_every_command_that_samples_speaks_one_vocabulary():
    """The commands that run a trained network over many batches take the same flags with the same help: where
    it runs (--device), which weights (--checkpoint, --weights), its precision (--fp32: bf16 autocast on a GPU
    otherwise, as in the in-training evaluation) and the progress bars off (--no-progress)."""
    import argparse

    from ditlab.cli import build_parser

    def leaf(*path):
        parser = build_parser()
        for name in path:
            parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        return {a.option_strings[-1]: a.help for a in parser._actions if a.option_strings}

    commands = [("sample",), ("diagnose", "collapse"), ("scene", "eval"), ("icl", "eval"), ("lift", "errors")]
    flags = [leaf(*c) for c in commands]
    for flag in ("--device", "--checkpoint", "--weights", "--fp32", "--no-progress"):
        helps = {c: f.get(flag) for c, f in zip(commands, flags)}
        assert all(h is not None for h in helps.values()), (flag, helps)
    for flag in ("--device", "--checkpoint", "--weights", "--fp32"):
        assert len({f[flag] for f in flags}) == 1, flag


def test_the_compile_flag_offers_what_sampling_accepts():
    """cliargs keeps its --compile choices as a literal (the CLI layer imports no torch to build its parser);
    they must stay those ditlab.generation.compile_for_sampling understands."""
    import argparse

    from ditlab.cliargs import add_compile
    from ditlab.generation import COMPILE_CHOICES

    parser = argparse.ArgumentParser()
    add_compile(parser)
    action = next(a for a in parser._actions if a.dest == "compile")
    assert tuple(action.choices) == COMPILE_CHOICES


def test_time_calls_ms_gives_one_time_per_repeat_of_the_calls():
    """ditlab.bench.time_calls_ms (the kernel benches' timer): each value is the mean of ``iters`` calls."""
    import time

    import torch

    from ditlab.bench import time_calls_ms

    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.01)

    times = time_calls_ms(slow, iters=3, repeats=2, device=torch.device("cpu"))
    assert len(calls) == 6 and len(times) == 2
    assert all(9.0 <= t < 200.0 for t in times)  # ~10 ms per call, not per repeat of three

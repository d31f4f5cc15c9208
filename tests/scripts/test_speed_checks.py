"""scripts/speed_checks.sh: every stage that times training reaches scripts/bench_train.py, and each command
line reads as meant (architectures as architectures, overrides as overrides). The fifteenth session lost its
first GPU calls to both: `timeout N bench` with `bench` a shell function (timeout runs programs, so nothing
ran), and `--arch DiT-S/2 optim.name=muon` (nargs='+' swallowed the override as an architecture)."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.script_modules import load_script

ROOT = Path(__file__).resolve().parents[2]
ARCHS = {"DiT-S/2", "DiT-B/2"}


@pytest.fixture(scope="module")
def bench_train():
    return load_script("bench_train")


def run_recording_python(tmp_path, *args: str):
    """Run `bash ARGS` with a stand-in python3 on PATH that records its arguments instead of running them:
    (the finished process, every recorded python3 command line split into words)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {shlex.quote(str(log))}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    lines = log.read_text().splitlines() if log.exists() else []
    return done, [shlex.split(line) for line in lines]


def recorded_commands(tmp_path, stage: str) -> list[list[str]]:
    """The scripts/bench_train.py command lines of a speed_checks.sh stage."""
    done, calls = run_recording_python(tmp_path, "scripts/speed_checks.sh", stage, str(tmp_path / "out"))
    done.check_returncode()
    return [c for c in calls if c[:1] == ["scripts/bench_train.py"]]


@pytest.mark.parametrize("stage,expect", [
    ("mlp", {"mlp_gemm": "cublas,triton", "arch": ["DiT-S/2", "DiT-B/2"]}),
    ("ctx77", {"context_tokens": 77}),
    ("muon", {"override": "optim.name="}),
    ("loop", {"fast_kernels": "on", "override": "task.kind=superres"}),
    ("streams", {"override": "task.kind=superres"}),
])
def test_each_training_stage_runs_the_bench_with_its_rows(tmp_path, bench_train, stage, expect):
    calls = recorded_commands(tmp_path, stage)
    assert calls, f"stage {stage} never ran scripts/bench_train.py"
    parsed = [bench_train.parse_args(argv[1:])[1] for argv in calls]
    for args in parsed:
        assert set(args.arch) <= ARCHS, args.arch
        assert "train.nan_check=log" in args.overrides
        assert args.out and args.out.startswith(str(tmp_path / "out"))

    def meets(args):
        return all(any(o.startswith(value) for o in args.overrides) if key == "override" else
                   getattr(args, key) == value for key, value in expect.items())

    assert any(meets(args) for args in parsed), [vars(a) for a in parsed]


def test_an_override_after_arch_is_an_override(bench_train):
    _, args = bench_train.parse_args(["--arch", "DiT-S/2", "optim.name=muon", "--repeats", "2"])
    assert args.arch == ["DiT-S/2"] and args.overrides == ["optim.name=muon"]
    _, args = bench_train.parse_args(["optim.name=muon"])
    assert args.arch == ["DiT-S/2", "DiT-B/2"]  # the default


def sample_rows(tmp_path, *args: str):
    """The `ditlab bench sample` command lines that `bash ARGS` runs (scripts/bench_sample_synthetic.sh)."""
    done, calls = run_recording_python(tmp_path, *args)
    return done, [c for c in calls if c[:4] == ["-m", "ditlab", "bench", "sample"]]


def test_the_sample_stage_times_compiled_against_fused_and_skips_eager(tmp_path):
    """The seventeenth session's call ran out of time in the known eager row, before the fused one."""
    done, calls = sample_rows(tmp_path, "scripts/speed_checks.sh", "sample", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert [("--compile=on" in c, "--fast-kernels=on" in c) for c in calls] == [(True, True), (True, False)]


def test_bench_sample_synthetic_rows(tmp_path):
    done, calls = sample_rows(tmp_path, "scripts/bench_sample_synthetic.sh")
    assert done.returncode == 0 and len(calls) == 3 and "--compile=off" in calls[0]  # all three by default
    (tmp_path / "bad").mkdir()
    done, calls = sample_rows(tmp_path / "bad", "scripts/bench_sample_synthetic.sh", "DiT-S/2", "1.5", "eager,bogus")
    assert done.returncode == 2 and "unknown row 'bogus'" in done.stderr and not calls

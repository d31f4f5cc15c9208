"""scripts/superres_study.sh's bookkeeping, with a stub `python3` that fakes `python3 -m ditlab ...`.

The stages' ditlab commands are exercised by the CPU smoke run (docs/superres.md); these tests pin what the
shell adds: skipping finished work, not leaving a result file behind a failed command, the budget's exit
code 3, the summary's keys and `collect`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "superres_study.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

STUB = r'''#!{python}
"""python3 -m ditlab CMD ...: the files CMD writes, no work; anything else runs the real python."""
import json, os, sys, time
from pathlib import Path

argv = sys.argv[1:]
if argv[:2] != ["-m", "ditlab"]:
    os.execv({python!r}, [{python!r}] + argv)
cmd, args = argv[2], argv[3:]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(" ".join([cmd] + args) + "\n")

def flag(name):
    return args[args.index(name) + 1]

if cmd == "train":
    time.sleep(float(os.environ.get("STUB_TRAIN_S", "0")))
    run = Path(next(a.split("=", 1)[1] for a in args if a.startswith("train.run_dir=")))
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({{"steps": 7, "images_per_s": 1.5, "parameters": 99}}, indent=2))
    print("ditlab: time limit of 1 s reached at step 7")
elif cmd == "sample":
    if os.environ.get("STUB_KILL_SHELL") and "sr_cross" in flag("--out"):
        os.kill(os.getppid(), 9)  # the shell running this mode dies, as under the OOM killer
        time.sleep(5)
    Path(flag("--out")).write_bytes(b"npz")
    Path(flag("--grid")).write_bytes(b"png")
elif cmd == "psnr":
    if os.path.exists(os.environ["STUB_FAIL_PSNR"]):
        print("ditlab: error: psnr failed", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({{"n": 4, "psnr_db": 20.5, "bilinear_psnr_db": 25.0}}))
elif cmd == "fid" and args[0] == "ref":
    Path(flag("--out")).write_bytes(b"npz")
elif cmd == "fid":
    Path(flag("--json")).write_text(json.dumps({{"fid": 50.25}}) + "\n")
elif cmd == "diagnose":
    out = Path(flag("--out"))
    out.mkdir(parents=True)
    (out / "collapse_cfg1.0_noise0.0.png").write_bytes(b"png")
    settings = [{{"cfg": 1.0, "cond_noise": 0.0, "cond_scale": 1.0, "seed_to_residual": 0.5}},
                {{"cfg": 2.0, "cond_noise": 0.0, "cond_scale": 0.8, "seed_to_residual": 0.25}}]
    (out / "collapse.json").write_text(json.dumps({{"settings": settings, "verdict": {{"collapsed": False}}}}))
'''


@pytest.fixture
def study(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "python3"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    fail_flag = tmp_path / "fail_psnr"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", STUB_LOG=str(log),
               STUB_FAIL_PSNR=str(fail_flag))

    def run(*args, **extra_env):
        p = subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=dict(env, **extra_env),
                           capture_output=True, text=True, timeout=120)
        return p

    def calls(cmd):
        return [line for line in log.read_text().splitlines() if line.split()[0] == cmd]

    return tmp_path / "study", run, calls, fail_flag


def test_failed_psnr_leaves_no_result_and_the_next_call_finishes_without_sampling_again(study):
    s, run, calls, fail_flag = study
    assert run("train", "train.zip", str(s), "1", "tokens").returncode == 0
    fail_flag.touch()
    p = run("sample", "test.zip", str(s), "tokens")
    assert p.returncode == 1, p.stderr
    # before: `dl psnr ... > psnr_cfgC.json` left an empty file, which the next call skipped and the
    # score stage's summary could not read
    assert not list((s / "sr_tokens").glob("psnr_cfg*"))
    assert (s / "sr_tokens" / "samples_cfg1.npz").exists()
    fail_flag.unlink()
    p = run("sample", "test.zip", str(s), "tokens")
    assert p.returncode == 0, p.stderr
    assert len(calls("sample")) == 2  # the samples of the failed call are reused
    assert json.loads((s / "sr_tokens" / "psnr_cfg2.json").read_text())["psnr_db"] == 20.5
    p = run("score", "test.zip", "inc.pt", str(s), "tokens")
    assert p.returncode == 0, p.stderr
    row, = json.loads((s / "superres_study.json").read_text())
    assert row["steps"] == 7 and row["parameters"] == 99
    assert row["psnr_cfg1"] == row["psnr_cfg2"] == 20.5 and row["bilinear_psnr_db"] == 25.0
    assert row["fid_cfg1"] == row["fid_cfg2"] == 50.25
    assert row["collapse_verdict"] == {"collapsed": False}
    assert row["seed_to_residual"] == {"cfg1_noise0_cs1": 0.5, "cfg2_noise0_cs0.8": 0.25}
    # a repeated stage does nothing
    n = len(calls("fid")) + len(calls("diagnose"))
    assert run("score", "test.zip", "inc.pt", str(s), "tokens").returncode == 0
    assert run("sample", "test.zip", str(s), "tokens").returncode == 0
    assert len(calls("fid")) + len(calls("diagnose")) == n and len(calls("sample")) == 2 and len(calls("psnr")) == 4


def test_budget_stops_between_units_with_exit_3(study):
    s, run, calls, _ = study
    p = run("train", "train.zip", str(s), "1", "tokens", "cross", DITLAB_BUDGET_S="1", STUB_TRAIN_S="1.2")
    assert p.returncode == 3, p.stderr
    assert (s / "sr_tokens" / "summary.json").exists() and not (s / "sr_cross").exists()
    p = run("train", "train.zip", str(s), "1", "tokens", "cross", DITLAB_BUDGET_S="1", STUB_TRAIN_S="1.2")
    assert p.returncode == 0, p.stderr
    assert "skip train tokens" in p.stdout and len(calls("train")) == 2


def test_sample_without_a_trained_run_fails(study):
    s, run, _, _ = study
    p = run("sample", "test.zip", str(s), "branch")
    assert p.returncode == 1 and "no trained run" in p.stderr


def test_collect_brings_the_summary_table_plot_and_archive(study, tmp_path):
    s, run, _, _ = study
    for stage in (("train", "train.zip", str(s), "1", "tokens"), ("sample", "test.zip", str(s), "tokens"),
                  ("score", "test.zip", "inc.pt", str(s), "tokens")):
        assert run(*stage).returncode == 0
    dest = tmp_path / "dest"
    assert run("collect", str(s), str(dest)).returncode == 0
    assert sorted(p.name for p in dest.iterdir()) == ["superres_study.json", "superres_study.md",
                                                       "superres_study.png", "superres_study_files.tgz"]
    table = (dest / "superres_study.md").read_text().splitlines()
    assert "W = 1 / 0.8" in table[0]  # the stub's sweep: CFG 1 at W 1, CFG 2 at W 0.8
    assert table[2] == "| tokens | 7 | 0.0 M | 20.50 / 20.50 | 50.2 / 50.2 | 0.50 / - | - / 0.25 | no |"
    assert "bilinear upsampling: 25.00 dB" in table[4]
    with tarfile.open(dest / "superres_study_files.tgz") as tar:
        names = set(tar.getnames())
    assert {"train_tokens.log", "sr_tokens/summary.json", "sr_tokens/grid_cfg1.png", "sr_tokens/psnr_cfg2.json",
            "sr_tokens/fid_cfg1.json", "sr_tokens/diagnose/collapse.json",
            "sr_tokens/diagnose/collapse_cfg1.0_noise0.0.png"} <= names
    assert not any(n.endswith(".npz") for n in names)


def test_parallel_sample_and_score_run_each_mode_once(study):
    """DITLAB_JOBS=3: the modes' sample and score units run in child processes; each unit once, the summary
    holds every mode, a repeat does nothing, and a failed child makes the stage exit 1 without a redo."""
    s, run, calls, fail_flag = study
    modes = ("tokens", "cross", "branch")
    assert run("train", "train.zip", str(s), "1", *modes).returncode == 0
    p = run("sample", "test.zip", str(s), *modes, DITLAB_JOBS="3")
    assert p.returncode == 0, p.stderr
    assert len(calls("sample")) == 6 and len(calls("psnr")) == 6
    assert all((s / f"sr_{m}" / f"psnr_cfg{c}.json").exists() for m in modes for c in (1, 2))
    p = run("score", "test.zip", "inc.pt", str(s), *modes, DITLAB_JOBS="2")  # fewer jobs than modes
    assert p.returncode == 0, p.stderr
    assert [r["mode"] for r in json.loads((s / "superres_study.json").read_text())] == list(modes)
    assert len([c for c in calls("fid") if c.split()[1] != "ref"]) == 6 and len(calls("diagnose")) == 3
    assert run("sample", "test.zip", str(s), *modes, DITLAB_JOBS="3").returncode == 0
    assert len(calls("sample")) == 6
    for m in ("cross", "branch"):
        for f in (s / f"sr_{m}").glob("psnr_cfg*.json"):
            f.unlink()
    fail_flag.touch()
    p = run("sample", "test.zip", str(s), *modes, DITLAB_JOBS="3")
    assert p.returncode == 1 and "a unit failed" in p.stderr
    assert len(calls("psnr")) == 6 + 4  # one try per missing PSNR file, none redone by the parent


def test_a_child_killed_fails_the_stage(study):
    """A child that dies (exit 137, not one of the stage's own codes 0 / 1 / 3) fails the stage, in both of
    parallel()'s wait spots (the first child waited on when the jobs are full, and the rest)."""
    s, run, calls, _ = study
    modes = ("tokens", "cross", "branch")
    assert run("train", "train.zip", str(s), "1", *modes).returncode == 0
    # two jobs, cross first: cross is waited on when the jobs are full; three jobs: in the final waits
    for jobs, order in (("2", ("cross", "tokens")), ("3", ("tokens", "cross"))):
        p = run("sample", "test.zip", str(s), *order, DITLAB_JOBS=jobs, STUB_KILL_SHELL="1")
        assert p.returncode == 1 and "a unit failed" in p.stderr, (jobs, p.returncode, p.stderr)
        assert not (s / "sr_cross" / "psnr_cfg1.json").exists()


def test_all_runs_each_mode_to_the_end_before_the_next_and_writes_one_summary(study):
    s, run, calls, _ = study
    p = run("all", "train.zip", "test.zip", "inc.pt", str(s), "1", "tokens", "branch")
    assert p.returncode == 0, p.stderr
    order = [(line.split()[0], "branch" if "sr_branch" in line else "tokens" if "sr_tokens" in line else "-")
             for line in (s.parent / "calls.log").read_text().splitlines()]
    first_branch = next(i for i, (_, m) in enumerate(order) if m == "branch")
    assert ("diagnose", "tokens") in order[:first_branch]  # tokens scored before branch trained
    assert [r["mode"] for r in json.loads((s / "superres_study.json").read_text())] == ["tokens", "branch"]
    assert len(calls("train")) == 2 and len(calls("sample")) == 4 and len(calls("diagnose")) == 2
    assert run("all", "train.zip", "test.zip", "inc.pt", str(s), "1").returncode == 2  # no mode


def test_all_stops_at_a_failed_unit(study):
    s, run, calls, fail_flag = study
    fail_flag.touch()
    p = run("all", "train.zip", "test.zip", "inc.pt", str(s), "1", "tokens", "branch")
    assert p.returncode == 1 and len(calls("train")) == 1  # branch is not trained after tokens failed


def test_restore_brings_back_finished_modes_only_and_the_next_stages_skip_them(study, tmp_path):
    """A machine lost after `collect`: on a fresh one, `restore` puts the finished modes' files back (not a
    trained-but-unscored mode's summary.json, which would pass for a run whose checkpoint is gone); the stages
    then skip the restored modes and the summary covers them."""
    s, run, calls, _ = study
    assert run("all", "train.zip", "test.zip", "inc.pt", str(s), "1", "tokens").returncode == 0
    assert run("train", "train.zip", str(s), "1", "branch").returncode == 0  # trained, not sampled or scored
    dest = tmp_path / "dest"
    assert run("collect", str(s), str(dest)).returncode == 0
    fresh = tmp_path / "fresh"
    p = run("restore", str(dest / "superres_study_files.tgz"), str(fresh))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"restored": ["tokens"], "skipped_unfinished": ["branch"]}
    assert (fresh / "sr_tokens" / "diagnose" / "collapse.json").exists() and (fresh / "train_tokens.log").exists()
    assert not (fresh / "sr_branch").exists()
    before = {cmd: len(calls(cmd)) for cmd in ("train", "sample", "diagnose")}
    assert run("all", "train.zip", "test.zip", "inc.pt", str(fresh), "1", "tokens", "branch").returncode == 0
    assert {cmd: len(calls(cmd)) - n for cmd, n in before.items()} == {"train": 1, "sample": 2, "diagnose": 1}
    assert [r["mode"] for r in json.loads((fresh / "superres_study.json").read_text())] == ["tokens", "branch"]

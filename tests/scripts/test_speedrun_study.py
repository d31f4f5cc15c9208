"""scripts/speedrun_study.sh pack / unpack: a run stopped at a checkpoint travels to another machine with its
latest checkpoint (and its best one with --with-best, or when the best is the latest), not the older ones
rotation keeps; finished runs and runs without a checkpoint stay behind (the long stage outlasts one session's
device time: docs/speedrun.md)."""
from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def study_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "speedrun_study.sh"), *args], capture_output=True,
                          text=True, timeout=60)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_pack_takes_the_stopped_runs_latest_checkpoint_and_the_best_on_request_and_unpack_restores_them(tmp_path):
    study = tmp_path / "study"
    run = study / "long" / "runs" / "best_recipe-s0"
    write(run / "config.yaml", "train: {time_limit: 1800}\n")
    write(run / "metrics.jsonl", '{"step": 3}\n')
    write(run / "ema_snapshots" / "step_00000003_sr0.050.safetensors", "snapshot")
    for step in (1, 2, 3):
        write(run / "checkpoints" / f"step_0000000{step}" / "state.pt", f"state {step}")
    write(run / "checkpoints" / "latest", "step_00000003\n")
    write(run / "checkpoints" / "best", json.dumps({"checkpoint": "step_00000002", "value": 7.5}) + "\n")
    finished = study / "final" / "runs" / "baseline-s0"
    write(finished / "summary.json", "{}")
    write(finished / "checkpoints" / "latest", "step_00000009\n")
    write(study / "screen" / "runs" / "tshift2-s0" / "metrics.jsonl", "{}\n")  # stopped before a checkpoint

    prefix = "long/runs/best_recipe-s0/"
    common = ("config.yaml", "metrics.jsonl", "ema_snapshots/step_00000003_sr0.050.safetensors", "checkpoints/latest",
              "checkpoints/step_00000003/state.pt")
    for flags, kept in (((), common),  # the best (step 2) and its pointer stay behind: half the carry
                        (("--with-best",), common + ("checkpoints/best", "checkpoints/step_00000002/state.pt"))):
        packed = tmp_path / "long.tar"
        done = study_script("pack", str(study), str(packed), *flags)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["runs"] == 1
        with tarfile.open(packed) as tar:
            names = set(tar.getnames())
        assert names == {prefix + n for n in kept}  # not step_00000001, nothing of the other runs

    other = tmp_path / "elsewhere"
    assert study_script("unpack", str(packed), str(other)).returncode == 0
    for name in names:
        assert (other / name).read_bytes() == (study / name).read_bytes()

    # a best that is the latest travels with it, pointer included
    write(run / "checkpoints" / "best", json.dumps({"checkpoint": "step_00000003", "value": 7.0}) + "\n")
    assert study_script("pack", str(study), str(packed)).returncode == 0
    with tarfile.open(packed) as tar:
        assert set(tar.getnames()) == {prefix + n for n in common + ("checkpoints/best",)}
    assert study_script("pack", str(study), str(packed), "--best").returncode == 2  # a typo is an error


def test_pack_with_nothing_stopped_is_an_error(tmp_path):
    write(tmp_path / "study" / "screen" / "runs" / "a-s0" / "summary.json", "{}")
    done = study_script("pack", str(tmp_path / "study"), str(tmp_path / "x.tar"))
    assert done.returncode == 1 and "no run" in done.stderr and not (tmp_path / "x.tar").exists()


def test_run_passes_the_budget_and_ends_with_the_plan(tmp_path):
    """`run TRAIN INC STUDY 570`: ablate with --budget-s 470 (100 s for the first unit's scoring), then --plan's
    last line, so that a device call's reply shows what is left."""
    from tests.scripts.test_speed_checks import run_recording_python

    done, calls = run_recording_python(tmp_path, "scripts/speedrun_study.sh", "run", "train.zip", "inc.pt",
                                       str(tmp_path / "s"), "570", "--compile", "off")
    assert done.returncode == 0, done.stderr
    ablate, plan = calls
    assert ablate[ablate.index("--budget-s") + 1] == "470" and ablate[-2:] == ["--compile", "off"]
    assert plan[-1] == "--plan" and json.loads(done.stdout.splitlines()[-1]) == {"scored": 0, "exit": 0}


def _archive(path: Path, files: dict[str, tuple[str, int]]) -> None:
    """A collect-like archive: {name: (text, mtime)}."""
    import io

    with tarfile.open(path, "w:gz") as tar:
        for name, (text, mtime) in files.items():
            info = tarfile.TarInfo(f"./{name}")
            data = text.encode()
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))


def test_merge_keeps_the_new_archive_and_adds_the_old_runs_it_lacks(tmp_path):
    """`merge OLD NEW OUT` (the archive committed after a session): NEW's files whole; OLD's run summaries and
    metrics only for runs NEW does not have; none of OLD's scores (NEW holds the restored ones, and one it lacks was
    dropped when its unit was trained again); no grids or plots; file times kept."""
    old, new, out = tmp_path / "old.tgz", tmp_path / "new.tgz", tmp_path / "out.tgz"
    _archive(old, {"screen/scores/a-s0__default.json": ('{"fid": 1}', 100),
                   "screen/runs/a-s0/summary.json": ("old a", 100),
                   "final/scores/c-s0__default__cfg.json": ('{"fid": 7.2}', 110),   # c trained again since
                   "final/scores/c-s0__default__nocfg.json": ('{"fid": 9.9}', 111),  # ... and dropped then
                   "final/runs/c-s0/summary.json": ("old c", 110),
                   "screen/grids/a-s0__default.png": ("png", 100)})
    _archive(new, {"screen/scores/a-s0__default.json": ('{"fid": 1}', 100),      # restored
                   "final/scores/c-s0__default__cfg.json": ('{"fid": 7.0}', 200),  # the new training's
                   "final/runs/c-s0/summary.json": ("new c", 190),
                   "final/results.md": ("table", 201),
                   "final/results.png": ("png", 201)})
    done = study_script("merge", str(old), str(new), str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"merged": str(out), "scores": 2, "runs_from_old": 1}
    with tarfile.open(out) as tar:
        got = {m.name: (tar.extractfile(m).read().decode(), m.mtime) for m in tar.getmembers()}
    assert got == {"screen/scores/a-s0__default.json": ('{"fid": 1}', 100),
                   "screen/runs/a-s0/summary.json": ("old a", 100),
                   "final/scores/c-s0__default__cfg.json": ('{"fid": 7.0}', 200),
                   "final/runs/c-s0/summary.json": ("new c", 190),
                   "final/results.md": ("table", 201)}
    restored = study_script("restore", str(out), str(tmp_path / "study"))  # what the next machine does with it
    assert json.loads(restored.stdout) == {"restored_scores": 2}


def test_collect_and_restore_take_a_folder_without_stages(tmp_path):
    """Another ablation's --out (the time to quality, the guidance study: results.md at its top): collect archives
    its tables, scores, grids, failures and runs' summaries, metrics and configs as NAME_files.tgz (never a
    checkpoint), and restore puts its scores and grids back; a study's stage folders keep their archive name."""
    folder = tmp_path / "guidance"
    for name in ("results.md", "results.csv", "results.png", "results_evals.png", "scores/preset-s2__default__cfg.json",
                 "grids/preset-s2__default__cfg.png", "runs/preset-s2/summary.json", "runs/preset-s2/metrics.jsonl",
                 "runs/preset-s2/config.yaml", "runs/preset-s2/checkpoints/step_00000009/state.pt",
                 "runs/preset-s2/checkpoints/latest"):
        write(folder / name, name)
    done = study_script("collect", str(folder), str(tmp_path / "back"))
    assert done.returncode == 0, done.stderr
    assert "== " in done.stdout and "results.md" in done.stdout
    with tarfile.open(tmp_path / "back" / "guidance_files.tgz") as tar:
        names = {n for n in tar.getnames() if "." in Path(n).name}
    assert names == {"results.md", "results.csv", "results.png", "results_evals.png",
                     "scores/preset-s2__default__cfg.json", "grids/preset-s2__default__cfg.png",
                     "runs/preset-s2/summary.json", "runs/preset-s2/metrics.jsonl", "runs/preset-s2/config.yaml"}
    fresh = tmp_path / "fresh"
    done = study_script("restore", str(tmp_path / "back" / "guidance_files.tgz"), str(fresh))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"restored_scores": 1}
    assert (fresh / "grids" / "preset-s2__default__cfg.png").is_file() and not (fresh / "runs").exists()

    study = tmp_path / "study"
    write(study / "final" / "results.md", "final")
    write(study / "final" / "scores" / "a-s0__default__cfg.json", "{}")
    write(study / "ref_train.npz", "stats")
    assert study_script("collect", str(study), str(tmp_path / "back2")).returncode == 0
    with tarfile.open(tmp_path / "back2" / "speedrun_study_files.tgz") as tar:
        assert {n for n in tar.getnames() if "." in Path(n).name} == {"final/results.md",
                                                                      "final/scores/a-s0__default__cfg.json"}
    done = study_script("restore", str(tmp_path / "back2" / "speedrun_study_files.tgz"), str(tmp_path / "fresh2"))
    assert json.loads(done.stdout) == {"restored_scores": 1}

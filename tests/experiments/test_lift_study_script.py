"""scripts/lift_study.sh's collect and restore: a study outlives a machine through its score files."""
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "lift_study.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None,
                                reason="needs bash and tar")


def sh(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_collect_then_restore_brings_back_scores_and_grids_but_no_run(tmp_path):
    study = tmp_path / "study"
    (study / "scores").mkdir(parents=True)
    (study / "scores" / "baseline_lo_s0__lo.json").write_text(json.dumps({"fid": 40.0}))
    (study / "grids").mkdir()
    (study / "grids" / "baseline_lo_s0.png").write_bytes(b"png")
    (study / "runs" / "baseline_lo_s0" / "checkpoints").mkdir(parents=True)
    (study / "runs" / "baseline_lo_s0" / "summary.json").write_text("{}")
    (study / "results.md").write_text("| table |\n")
    (study / "results.csv").write_text("a,b\n")
    dest = tmp_path / "out"
    p = sh("collect", str(study), str(dest))
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in dest.iterdir()) == ["lift_study_files.tgz", "results.csv", "results.md"]
    with tarfile.open(dest / "lift_study_files.tgz") as tar:
        assert "runs/baseline_lo_s0/summary.json" in tar.getnames()

    fresh = tmp_path / "fresh"
    p = sh("restore", str(dest / "lift_study_files.tgz"), str(fresh))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"restored_scores": 1}
    assert (fresh / "scores" / "baseline_lo_s0__lo.json").exists() and (fresh / "grids" / "baseline_lo_s0.png").exists()
    assert not (fresh / "runs").exists()  # a summary without its checkpoint would pass for a trained unit


def test_collect_without_grids_still_archives_the_scores(tmp_path):
    study = tmp_path / "study"
    (study / "scores").mkdir(parents=True)
    (study / "scores" / "a.json").write_text("{}")
    (study / "results.md").write_text("")
    (study / "results.csv").write_text("")
    assert sh("collect", str(study), str(tmp_path / "out")).returncode == 0
    p = sh("restore", str(tmp_path / "out" / "lift_study_files.tgz"), str(tmp_path / "fresh"))
    assert p.returncode == 0 and json.loads(p.stdout) == {"restored_scores": 1}

"""scripts/loop_rate.py (the training loop's images/s from a run's logs) and scripts/bench_loop_gap.sh (the loop
against the bench): the windows it counts, and a gap script whose rows measure the preset they name."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.script_modules import load_script

ROOT = Path(__file__).resolve().parents[2]


def write_run(run: Path, rates: list[float], timed_steps: int, timed_seconds: float, batch: int = 256) -> Path:
    run.mkdir(parents=True)
    rows = [{"step": 200 * (i + 1), "loss": 0.1, "images_per_s": r} for i, r in enumerate(rates)]
    rows.insert(2, {"step": 400, "eval/fid": 9.0})  # an evaluation line has no rate: not a window
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"timed_steps": timed_steps, "timed_seconds": timed_seconds,
                                                  "batch_size": batch}))
    return run


def test_loop_rate_leaves_out_the_compiling_and_the_cut_window(tmp_path):
    rates = [1000.0] + [6000.0 + i for i in range(12)] + [3000.0]  # compiling first, cut by the time limit last
    out = load_script("loop_rate").loop_rate(write_run(tmp_path / "run", rates, 9956, 420.0))
    assert out["windows"] == 12
    assert out["median"] == 6005.5 and out["min"] == 6000.0 and out["max"] == 6011.0
    assert out["first10"] == 6004.5 and out["last10"] == 6006.5
    assert out["timed_images_per_s"] == round(9956 * 256 / 420.0, 1)


def test_loop_rate_names_a_folder_without_logs(tmp_path):
    with pytest.raises(SystemExit, match="metrics.jsonl does not exist"):
        load_script("loop_rate").loop_rate(tmp_path)


def test_the_gap_script_refuses_an_unknown_row(tmp_path):
    done = subprocess.run(["bash", "scripts/bench_loop_gap.sh", str(tmp_path / "out"), "10", "preset_short,sustained"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown row 'sustained'" in done.stderr


def test_the_gap_scripts_recipe_on_the_study_base_is_the_preset():
    """script_short gives scripts/bench_train.py the preset's keys beyond speedrun_v1.yaml as overrides (the rows
    BENCHMARKS.md quoted): they must be exactly those keys, or the row measures another recipe than the preset's."""
    from ditlab.config import load_config
    from ditlab.configlib import diff_configs

    text = (ROOT / "scripts" / "bench_loop_gap.sh").read_text()
    recipe = re.search(r"^recipe=\((.*?)\)", text, re.S | re.M).group(1).split()
    assert "train.nan_check=log" in recipe  # the bench script's default is another guard
    assert not diff_configs(load_config(str(ROOT / "configs/cifar10_speedrun.yaml"), []),
                            load_config(str(ROOT / "configs/speedrun_v1.yaml"), recipe))

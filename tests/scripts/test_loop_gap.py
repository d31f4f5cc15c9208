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


def test_loop_rate_takes_the_trainers_timed_rate_where_the_summary_has_it(tmp_path):
    """A summary of 2026-12-07 or later gives its own timed rate (each segment's batch size); older ones are
    computed from timed steps, one batch size and timed seconds as above."""
    run = write_run(tmp_path / "run", [1000.0, 6000.0, 6000.0, 3000.0], 19120, 900.8)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "timed_images_per_s": 5433.87}))
    assert load_script("loop_rate").loop_rate(run)["timed_images_per_s"] == 5433.9


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


def test_the_gap_summary_takes_each_rows_rate_and_its_second_half_clocks(tmp_path):
    (tmp_path / "phases.csv").write_text(
        "preset_short start,2026/12/07 00:00:00.000\npreset_short end,2026/12/07 00:00:40.000\n"
        "loop start,2026/12/07 00:00:40.000\nloop end,2026/12/07 00:01:40.000\n"
        "preset_long start,2026/12/07 00:01:40.000\n")  # cut off by the call's timeout
    clocks = ["2026/12/07 00:00:05.000, 1980, 300.0",  # compiling: the first half, not counted
              "2026/12/07 00:00:30.000, 1900, 650.0", "2026/12/07 00:00:35.000, 1880, 690.0",
              "2026/12/07 00:01:20.000, 1755, 700.0", "2026/12/07 00:01:30.000, [N/A], [N/A]",
              "2026/12/07 00:01:35.000, 1745, 700.0", "2026/12/07 00:01:3"]  # the line a kill cut
    (tmp_path / "clocks.csv").write_text("\n".join(clocks) + "\n")
    (tmp_path / "preset_short.jsonl").write_text('{"images_per_s": 6300.0, "repeats_images_per_s": [6300.0]}\n')
    (tmp_path / "loop.json").write_text(json.dumps({"windows": 3, "median": 6050.0, "timed_images_per_s": 6040.0}))
    summary = load_script("loop_gap_summary").summarize(tmp_path)
    assert summary["preset_short"]["images_per_s"] == 6300.0
    assert summary["preset_short"]["sm_clock_mhz_median"] == 1890 and summary["preset_short"]["seconds"] == 40.0
    assert summary["loop"]["images_per_s"] == 6050.0 and summary["loop"]["windows"] == 3
    assert summary["loop"]["sm_clock_mhz_median"] == 1750 and summary["loop"]["power_w_median"] == 700.0
    assert summary["preset_long"] == {"finished": False}

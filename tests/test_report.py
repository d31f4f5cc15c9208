"""`ditlab report` of a resumed run covers every segment: steps, wall time, throughput and epochs
(issue 15, item 6: it used to show only the last segment, e.g. 1 s and 0.0 epochs for 70 steps)."""
import json
import os
import re
import signal
import time

import numpy as np
import pytest

from ditlab.config import load_config
from ditlab.report import write_report
from ditlab.train.trainer import Trainer

BATCH, NUM = 8, 24  # 3 steps per epoch


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (NUM, 16, 16, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=images, labels=np.arange(NUM) % 2)
    return str(path)


def trainer(data, run_dir, steps, resume=False, sleep=0.0, sigterm_at=None) -> Trainer:
    cfg = load_config(None, [
        "model.arch=DiT-S/4", "model.hidden_size=32", "model.depth=1", "model.num_heads=2", "model.num_classes=2",
        f"data.path={data}", f"train.batch_size={BATCH}", "train.device=cpu", "train.log_every=1",
        "train.sample_every=0", "train.ckpt_every=1000", f"train.run_dir={run_dir}", f"train.steps={steps}"])
    t = Trainer(cfg, resume=resume, progress=False)
    original = t.train_step

    def slow_step():  # a known minimum duration per step, so wall times can be compared
        out = original()
        time.sleep(sleep)
        if t.step == sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)  # stopped (checkpoint, no summary.json), as by a scheduler
        return out

    t.train_step = slow_step
    return t


def report_line(run_dir, start: str) -> str:
    text = write_report(run_dir).read_text()
    return next(line for line in text.splitlines() if line.startswith(start))


def test_report_after_resumes_covers_every_segment(data, tmp_path):
    run = tmp_path / "run"
    # Segment 1: stopped by SIGTERM at step 4 (0.25 s a step): a checkpoint, no summary.json.
    assert trainer(data, run, 50, sleep=0.25, sigterm_at=4).run() == 128 + signal.SIGTERM
    assert not (run / "summary.json").exists()
    # Segment 2: resumed, runs to its end at step 7 (fast steps).
    assert trainer(data, run, 7, resume=True).run() == 0
    # Segment 3: the finished run resumed with more steps.
    assert trainer(data, run, 10, resume=True).run() == 0

    summary = json.loads((run / "summary.json").read_text())
    segments = summary["segments"]
    assert [(s["start_step"], s["end_step"], s["batch_size"]) for s in segments] == [(0, 4, 8), (4, 7, 8), (7, 10, 8)]
    assert segments[0]["wall_seconds"] >= 4 * 0.25  # the stopped segment's time is kept (from its checkpoint)
    assert summary["wall_seconds"] == pytest.approx(sum(s["wall_seconds"] for s in segments))
    assert summary["wall_seconds"] > summary["segment_wall_seconds"] + 1.0
    assert summary["segment_wall_seconds"] == pytest.approx(segments[-1]["wall_seconds"], abs=0.05)
    assert summary["steps"] == 10 and summary["epochs"] == pytest.approx(10 * BATCH / NUM)
    assert summary["images_per_s"] == pytest.approx(10 * BATCH / summary["wall_seconds"])

    steps = report_line(run, "- steps:")
    assert steps.startswith("- steps: 10, epochs seen: 3.33 ")  # 10 steps x 8 images / 24 examples
    wall = report_line(run, "- wall time:")
    m = re.match(r"- wall time: ([\d.]+) s over 3 segments \(resumed at steps 4, 7; the last one ([\d.]+) s\), "
                 r"throughput: ([\d.]+) images/s", wall)
    assert m, wall
    total, last, rate = map(float, m.groups())
    assert total >= 1.0 and total > last
    assert rate == pytest.approx(10 * BATCH / summary["wall_seconds"], rel=0.01, abs=0.1)


def test_report_of_an_unresumed_run_is_as_before(data, tmp_path):
    run = tmp_path / "run"
    assert trainer(data, run, 3).run() == 0
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["segments"]) == 1 and summary["wall_seconds"] == pytest.approx(summary["segment_wall_seconds"],
                                                                                      abs=0.05)
    assert report_line(run, "- steps:").startswith("- steps: 3, epochs seen: 1.00 ")
    assert "segments" not in report_line(run, "- wall time:")


def test_report_while_a_resumed_segment_has_no_summary_yet(data, tmp_path):
    """A summary.json from an earlier segment is named as such; epochs still follow the logged steps."""
    run = tmp_path / "run"
    assert trainer(data, run, 3).run() == 0
    assert trainer(data, run, 50, resume=True, sigterm_at=6).run() == 128 + signal.SIGTERM
    assert report_line(run, "- steps:") == "- steps: 6, epochs seen: 2.00"
    assert "summary.json is from step 3" in report_line(run, "- note:")


def test_a_missing_grid_is_an_error_naming_it(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    with pytest.raises(FileNotFoundError, match="--grid .*nope.png: no such file"):
        write_report(tmp_path, grid=str(tmp_path / "nope.png"))
    assert not (tmp_path / "report.md").exists()
    (tmp_path / "g.png").write_bytes(b"png")
    assert "![samples](g.png)" in write_report(tmp_path, grid=str(tmp_path / "g.png")).read_text()

"""RunLogger: JSONL lines, resume truncation, TensorBoard output, and the disabled no-op."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.train.log import RunLogger


def read_lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tb_scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return acc


def test_lines_written_and_parsed(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as log:
        log.log(1, {"loss": 0.5, "lr": torch.tensor(1e-3), "grad_norm": np.float32(2.0)})
        log.log(2, {"loss": float("nan"), "phase": "warmup"})
        # flushed per call: readable while the logger is still open
        assert len(read_lines(tmp_path)) == 2
    rows = read_lines(tmp_path)
    assert rows[0]["step"] == 1 and rows[0]["loss"] == 0.5 and rows[0]["lr"] == pytest.approx(1e-3)
    assert rows[0]["grad_norm"] == 2.0 and isinstance(rows[0]["time"], float)
    assert math.isnan(rows[1]["loss"]) and rows[1]["phase"] == "warmup"
    assert not (tmp_path / "tb").exists()


def test_reserved_names(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as log, pytest.raises(ValueError):
        log.log(1, {"step": 3})


def test_truncate_after_on_resume(tmp_path):
    with RunLogger(tmp_path, tensorboard=False) as log:
        for step in range(1, 6):
            log.log(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # torn by a crash
    with RunLogger(tmp_path, tensorboard=False) as log:
        assert log.truncate_after(3) == 3
        log.log(4, {"loss": 40.0})
    assert [r["step"] for r in read_lines(tmp_path)] == [1, 2, 3, 4]
    assert read_lines(tmp_path)[-1]["loss"] == 40.0
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_tensorboard_scalars_and_images(tmp_path):
    Image.fromarray(np.full((6, 6, 3), 200, np.uint8)).save(tmp_path / "grid.png")
    log = RunLogger(tmp_path / "run")
    log.log(1, {"loss": 1.5})
    log.log(2, {"loss": 0.5})
    log.log_image(2, "samples", np.zeros((4, 5, 3), np.uint8))
    log.log_image(2, "from_file", tmp_path / "grid.png")
    with pytest.raises(TypeError):
        log.log_image(2, "bad", np.zeros((4, 5, 3), np.float32))
    log.close()
    log.close()  # idempotent
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    acc = tb_scalars(tmp_path / "run")
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.5), (2, 0.5)]
    assert set(acc.Tags()["images"]) == {"samples", "from_file"}


def test_disabled_is_a_no_op(tmp_path):
    log = RunLogger(tmp_path / "rank1", enabled=False)
    log.log(1, {"loss": 1.0})
    log.log_image(1, "x", np.zeros((2, 2, 3), np.uint8))
    assert log.truncate_after(0) == 0
    log.close()
    assert not (tmp_path / "rank1").exists()

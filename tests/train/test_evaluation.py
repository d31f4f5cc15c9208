"""Evaluation during training (train.eval_every / eval_metric) and RUN/checkpoints/best."""
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ditlab.cli import main
from ditlab.config import load_config
from ditlab.runs import resolve_checkpoint
from ditlab.train.checkpoint import find_best_checkpoint, load_weights, read_best_pointer
from ditlab.train.evaluation import METRICS, Evaluator, Metric
from ditlab.train.trainer import Trainer


def tiny_cfg(data, run_dir, *extra):
    return load_config(None, [
        "model.arch=DiT-S/4", "model.hidden_size=32", "model.depth=2", "model.num_heads=2",
        "model.num_classes=4", "model.attn_dropout=0.1", f"data.path={data}", "train.batch_size=8",
        "train.device=cpu", "train.log_every=1", "train.sample_every=0", "train.ckpt_every=5",
        f"train.run_dir={run_dir}", "optim.lr=1e-3", "ema.decay=0.9", "train.eval_num=16", *extra])


def train(data, run_dir, steps, *extra, resume=False):
    trainer = Trainer(tiny_cfg(data, run_dir, f"train.steps={steps}", *extra), resume=resume, progress=False)
    assert trainer.run() == 0
    return trainer


def records(run_dir):
    return [json.loads(line) for line in open(Path(run_dir) / "metrics.jsonl")]


def train_losses(run_dir):
    return [r["loss"] for r in records(run_dir) if "loss" in r]


def evals(run_dir, metric="loss"):
    return {r["step"]: r[f"eval/{metric}"] for r in records(run_dir) if f"eval/{metric}" in r}


def step_dirs(run_dir):
    return sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("step_*"))


@pytest.fixture
def sequence(monkeypatch):
    """Replace the loss metric by one returning the values given, in turn (lower is better)."""
    values = []

    def fake(ctx):
        return values.pop(0)

    monkeypatch.setitem(METRICS, "loss", Metric(fake, None, higher_is_better=False))
    return values


# ---- when, what is logged, where best points ------------------------------------------------------
def test_held_out_loss_is_logged_at_eval_steps_and_best_names_the_lowest(tiny_data, tmp_path):
    run = tmp_path / "r"
    # eval_every 4 is not a multiple of ckpt_every 5: eval steps save a checkpoint of their own.
    trainer = train(tiny_data, run, 10, "train.eval_every=4")
    logged = evals(run)
    # ... and the last step, which eval_every does not land on (train.eval_at_end)
    assert sorted(logged) == [4, 8, 10] and all(math.isfinite(v) for v in logged.values())
    assert {"step_00000004", "step_00000008", "step_00000010"} <= set(step_dirs(run))
    best_step = min(logged, key=logged.get)
    record = read_best_pointer(run)
    assert record["checkpoint"] == f"step_{best_step:08d}" and record["value"] == logged[best_step]
    assert record["metric"] == "loss" and record["mode"] == "min" and record["step"] == best_step
    assert json.loads((run / "summary.json").read_text())["best"]["checkpoint"] == record["checkpoint"]
    assert trainer.best["value"] == logged[best_step]
    # Logged to TensorBoard too.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/loss")] == [4, 8, 10]


def test_the_last_step_is_evaluated_unless_eval_at_end_is_off(tiny_data, tmp_path, sequence):
    """eval_at_end: the final weights can be the best (a time-limited run seldom ends on an eval step); off,
    only eval_every's steps are (ditlab ablate, whose end score closes its curve). A run killed during its
    final evaluation does it on resume; one whose final evaluation logged does not."""
    sequence[:] = [3.0, 2.0, 1.0]
    train(tiny_data, tmp_path / "on", 5, "train.eval_every=2")
    assert evals(tmp_path / "on") == {2: 3.0, 4: 2.0, 5: 1.0}
    assert read_best_pointer(tmp_path / "on")["checkpoint"] == "step_00000005"
    sequence[:] = [3.0, 2.0]
    train(tiny_data, tmp_path / "off", 5, "train.eval_every=2", "train.eval_at_end=false")
    assert evals(tmp_path / "off") == {2: 3.0, 4: 2.0} and sequence == []
    sequence[:] = [3.0, 2.0, 4.0]
    train(tiny_data, tmp_path / "last", 4, "train.eval_every=2")  # the last step is an eval step: once
    assert evals(tmp_path / "last") == {2: 3.0, 4: 2.0} and sequence == [4.0]

    run = tmp_path / "killed"
    sequence[:] = [3.0, 2.0, Killed]

    def killed_at_the_end(ctx):
        value = sequence.pop(0)
        if value is Killed:
            raise Killed
        return value

    METRICS["loss"] = Metric(killed_at_the_end, None, higher_is_better=False)  # `sequence` restores the metric
    with pytest.raises(Killed):
        train(tiny_data, run, 5, "train.eval_every=2")
    assert evals(run) == {2: 3.0, 4: 2.0} and step_dirs(run)[-1] == "step_00000005"  # saved before it evaluated
    sequence[:] = [1.0, 9.0]
    train(tiny_data, run, 5, "train.eval_every=2", resume=True)
    assert evals(run) == {2: 3.0, 4: 2.0, 5: 1.0} and sequence == [9.0]
    train(tiny_data, run, 5, "train.eval_every=2", resume=True)  # logged: not again
    assert sequence == [9.0] and read_best_pointer(run)["checkpoint"] == "step_00000005"


def test_best_follows_the_metric_survives_rotation_and_resume(tiny_data, tmp_path, sequence):
    run = tmp_path / "r"
    sequence[:] = [3.0, 1.0, 2.0]
    train(tiny_data, run, 6, "train.eval_every=2", "train.keep_checkpoints=1")
    assert evals(run) == {2: 3.0, 4: 1.0, 6: 2.0}
    assert read_best_pointer(run)["checkpoint"] == "step_00000004"
    assert step_dirs(run) == ["step_00000004", "step_00000006"]  # keep 1, plus the best
    folder, record = find_best_checkpoint(run)
    assert folder.name == "step_00000004" and record["value"] == 1.0
    assert resolve_checkpoint(run, "best") == run / "checkpoints" / "step_00000004"

    # Resumed: 5.0 at step 8 is compared with the stored 1.0 (not a fresh start), 0.5 at step 10 wins.
    sequence[:] = [5.0, 0.5]
    train(tiny_data, run, 8, "train.eval_every=2", "train.keep_checkpoints=1", resume=True)
    assert read_best_pointer(run)["checkpoint"] == "step_00000004"
    assert step_dirs(run) == ["step_00000004", "step_00000008"]
    train(tiny_data, run, 10, "train.eval_every=2", "train.keep_checkpoints=1", resume=True)
    assert read_best_pointer(run)["checkpoint"] == "step_00000010"
    assert evals(run) == {2: 3.0, 4: 1.0, 6: 2.0, 8: 5.0, 10: 0.5}
    # The old best goes with the next rotation, not before.
    assert step_dirs(run) == ["step_00000004", "step_00000010"]


def test_training_stops_once_the_metric_has_not_improved_for_patience_evaluations(tiny_data, tmp_path, sequence,
                                                                                capsys):
    """train.eval_patience: 2.0 at step 2 is the best; steps 3 and 4 do not beat it, so the run stops at 4 with
    its checkpoint and summary, and the best stays step 2. Resumed, it stops again before training (the count
    comes from the log); with a larger patience it trains on. 0 never stops."""
    run = tmp_path / "r"
    sequence[:] = [3.0, 2.0, 2.0, 2.5, 9.9]
    train(tiny_data, run, 10, "train.eval_every=1", "train.eval_patience=2")
    assert evals(run) == {1: 3.0, 2: 2.0, 3: 2.0, 4: 2.5} and sequence == [9.9]  # 2.0 again is no improvement
    assert "early stop at step 4: loss has not improved on its best (2 at step 2) for 2 evaluations" in (
        capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["stopped_early"] == {"step": 4, "patience": 2}
    assert summary["best"]["step"] == 2 and step_dirs(run)[-1] == "step_00000004"
    train(tiny_data, run, 10, "train.eval_every=1", "train.eval_patience=2", resume=True)
    assert json.loads((run / "summary.json").read_text())["steps"] == 4 and sequence == [9.9]
    sequence[:] = [1.0, 5.0, 5.0, 5.0]
    train(tiny_data, run, 10, "train.eval_every=1", "train.eval_patience=3", resume=True)
    assert evals(run)[5] == 1.0 and max(evals(run)) == 8 and sequence == []  # a new best at 5, then 3 without
    # Patience spent at the run's last step is the run's end, not an early stop.
    capsys.readouterr()
    sequence[:] = [1.0, 2.0, 3.0]
    train(tiny_data, tmp_path / "at_end", 3, "train.eval_every=1", "train.eval_patience=2")
    assert sorted(evals(tmp_path / "at_end")) == [1, 2, 3] and "early stop" not in capsys.readouterr().out
    assert "stopped_early" not in json.loads((tmp_path / "at_end" / "summary.json").read_text())
    sequence[:] = [3.0, 4.0, 5.0, 6.0]
    train(tiny_data, tmp_path / "never", 4, "train.eval_every=1")
    assert sorted(evals(tmp_path / "never")) == [1, 2, 3, 4]
    assert "stopped_early" not in json.loads((tmp_path / "never" / "summary.json").read_text())
    with pytest.raises(ValueError, match="train.eval_patience must be >= 0"):
        train(tiny_data, tmp_path / "bad", 4, "train.eval_every=1", "train.eval_patience=-1")


class Killed(BaseException):
    """The process killed during an evaluation (a signal's grace period ran out)."""


def test_an_evaluation_killed_midway_is_done_again_on_resume(tiny_data, tmp_path, monkeypatch):
    """An eval step saves before it evaluates: the run resumes at that step, and its evaluation, which never
    logged a value, runs before training goes on (at the training seconds of that step), so that the
    time-to-metric curve keeps its point; an evaluation that did log is not repeated."""
    calls = []

    def fake(ctx):
        calls.append(len(calls))
        if len(calls) == 2:
            raise Killed
        return float(len(calls))

    monkeypatch.setitem(METRICS, "loss", Metric(fake, None, higher_is_better=False))
    run = tmp_path / "r"
    with pytest.raises(Killed):
        train(tiny_data, run, 6, "train.eval_every=2")
    assert evals(run) == {2: 1.0} and step_dirs(run)[-1] == "step_00000004"
    train(tiny_data, run, 6, "train.eval_every=2", resume=True)
    assert evals(run) == {2: 1.0, 4: 3.0, 6: 4.0} and len(calls) == 4
    seconds = {r["step"]: r["eval/train_seconds"] for r in records(run) if "eval/train_seconds" in r}
    assert seconds[2] <= seconds[4] <= seconds[6]
    train(tiny_data, run, 8, "train.eval_every=2", resume=True)  # resumed at 6, evaluated: not again
    assert evals(run) == {2: 1.0, 4: 3.0, 6: 4.0, 8: 5.0}


def test_higher_is_better_metrics_and_nan():
    psnr = Evaluator.__new__(Evaluator)
    psnr.metric = METRICS["psnr"]
    assert psnr.mode == "max" and psnr.better(2.0, 1.0) and not psnr.better(1.0, 2.0)
    loss = Evaluator.__new__(Evaluator)
    loss.metric = METRICS["loss"]
    assert loss.mode == "min" and loss.better(1.0, 2.0) and loss.better(5.0, None)
    assert not loss.better(float("nan"), None) and not loss.better(float("nan"), 1.0)
    assert {n: m.higher_is_better for n, m in METRICS.items()} == {
        "loss": False, "fid": False, "psnr": True, "collapse": True, "icl_error_ratio": False}


# ---- a corrupt best ---------------------------------------------------------------------------------
def test_corrupt_best_is_skipped_with_a_warning(tiny_data, tmp_path, sequence, capsys):
    run = tmp_path / "r"
    sequence[:] = [1.0, 2.0]
    train(tiny_data, run, 4, "train.eval_every=2")
    best = run / "checkpoints" / "step_00000002"
    assert read_best_pointer(run)["checkpoint"] == best.name
    (best / "ema.safetensors").unlink()

    with pytest.warns(UserWarning, match=r"unusable best checkpoint .*step_00000002.*ema.safetensors"):
        assert find_best_checkpoint(run) is None
    # --checkpoint best is an error naming the pointer (no silent fallback to another checkpoint).
    with pytest.warns(UserWarning, match="step_00000002"):
        assert main(["sample", str(run), "--checkpoint", "best", "--num", "2", "--steps", "1",
                     "--out", str(tmp_path / "s.npz")]) == 1
    assert "--checkpoint best" in capsys.readouterr().err
    # A resumed run warns, forgets the unusable best and starts a new one at its next evaluation.
    sequence[:] = [7.0]
    with pytest.warns(UserWarning, match="unusable best checkpoint"):
        train(tiny_data, run, 6, "train.eval_every=2", resume=True)
    assert read_best_pointer(run) == {"checkpoint": "step_00000006", "metric": "loss", "value": 7.0,
                                      "mode": "min", "step": 6}


def test_no_best_is_a_clear_error(tiny_data, tmp_path):
    run = tmp_path / "r"
    train(tiny_data, run, 5)
    with pytest.raises(FileNotFoundError, match="--checkpoint best: .*best is missing"):
        resolve_checkpoint(run, "best")


def test_init_from_the_best_pointer_loads_the_best_not_the_latest(tiny_data, tmp_path, sequence):
    """train.init_from=RUN/checkpoints/best: two-stage training from the early-stopping choice."""
    sequence.extend([1.0, 2.0])  # step 2 is best, step 4 latest
    first = tmp_path / "a"
    train(tiny_data, first, 4, "train.eval_every=2")
    assert read_best_pointer(first)["checkpoint"] == "step_00000002"
    best = load_weights(first / "checkpoints" / "step_00000002", "ema")
    latest = load_weights(first, "ema")
    assert not all(torch.equal(best[k], latest[k]) for k in best)
    assert all(torch.equal(best[k], v) for k, v in load_weights(first / "checkpoints" / "best", "ema").items())
    stage2 = Trainer(tiny_cfg(tiny_data, tmp_path / "b", "train.steps=1", f"train.init_from={first}/checkpoints/best"),
                     progress=False)
    assert all(torch.equal(best[k], v) for k, v in stage2.model.state_dict().items())
    (first / "checkpoints" / "best").write_text("{not json")
    with pytest.warns(UserWarning, match="unusable best checkpoint pointer"), \
            pytest.raises(Exception, match="names no usable checkpoint"):
        Trainer(tiny_cfg(tiny_data, tmp_path / "c", "train.steps=1", f"train.init_from={first}/checkpoints/best"),
                progress=False)


def test_sample_checkpoint_best(tiny_data, tmp_path, sequence):
    run = tmp_path / "r"
    sequence[:] = [2.0, 1.0, 3.0]
    train(tiny_data, run, 6, "train.eval_every=2")
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--checkpoint", "best", "--num", "2", "--steps", "1", "--sampler", "euler",
                 "--out", str(out)]) == 0
    meta = json.loads(str(np.load(out)["ditlab_meta"]))
    assert Path(meta["checkpoint"]).name == "step_00000004"


# ---- config errors at start-up ----------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["train.eval_metric=psnr"], r"train.eval_metric=psnr does not apply to task.kind=image"),
    (["train.eval_metric=icl_error_ratio"], r"train.eval_metric=icl_error_ratio does not apply to task.kind=image"),
    (["train.eval_metric=fid"], r"train.eval_metric=fid needs train.eval_ref"),
    (["train.eval_num=0"], r"train.eval_num must be >= 1"),
    (["train.eval_ref=ref.npz"], r"train.eval_ref is the reference of train.eval_metric=fid; this run's metric is loss"),
])
def test_bad_eval_config_is_an_error_before_the_data_is_read(tmp_path, extra, message):
    cfg = tiny_cfg(tmp_path / "missing.npz", tmp_path / "r", "train.eval_every=2", *extra)
    with pytest.raises(ValueError, match=message):
        Trainer(cfg, progress=False)
    assert not (tmp_path / "r").exists()


def test_eval_options_with_evaluation_off_are_named_at_start_up(tiny_data, tmp_path, capsys):
    """train.eval_every=0 turns a config's evaluation off; the options it leaves unused are said, not ignored."""
    train(tiny_data, tmp_path / "r", 1, "train.eval_metric=fid", "train.eval_ref=ref.npz", "train.eval_at_end=false")
    out = capsys.readouterr().out
    assert ("train.eval_metric=fid, train.eval_num=16, train.eval_ref=ref.npz, train.eval_at_end=False not used: "
            "train.eval_every=0") in out
    assert not evals(tmp_path / "r", "fid")


def test_bad_eval_metric_for_the_kind_through_the_cli(tmp_path, capsys):
    assert main(["train", "configs/icl_small.yaml", "train.eval_every=2", "train.eval_metric=fid", "train.device=cpu",
                 f"train.run_dir={tmp_path / 'r'}"]) == 1
    err = capsys.readouterr().err
    assert "train.eval_metric=fid" in err and "task.kind=icl" in err


# ---- reproducibility --------------------------------------------------------------------------------
def test_eval_leaves_training_bitwise_unchanged_and_resume_exact(tiny_data, tmp_path):
    off = tmp_path / "off"
    train(tiny_data, off, 10)
    on = tmp_path / "on"
    train(tiny_data, on, 10, "train.eval_every=3")
    split = tmp_path / "split"
    train(tiny_data, split, 5, "train.eval_every=3")
    torch.manual_seed(999)  # whatever the process did in between must not matter
    train(tiny_data, split, 10, "train.eval_every=3", resume=True)

    assert train_losses(off) == train_losses(on) == train_losses(split)  # bitwise equal floats
    # split also evaluated its first end, step 5 (train.eval_at_end), and trained on bitwise the same
    assert sorted(evals(on)) == [3, 6, 9, 10] and sorted(evals(split)) == [3, 5, 6, 9, 10]
    assert evals(on) == {k: v for k, v in evals(split).items() if k != 5}
    assert read_best_pointer(on) == read_best_pointer(split)
    for which in ("model", "ema"):
        a, b, c = load_weights(off, which), load_weights(on, which), load_weights(split, which)
        assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)


def test_evaluation_restores_every_global_rng(tiny_data, tmp_path):
    trainer = Trainer(tiny_cfg(tiny_data, tmp_path / "r", "train.steps=2", "train.eval_every=1"), progress=False)
    import random

    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    value = trainer.evaluator()
    assert math.isfinite(value) and value == trainer.evaluator()  # fixed held-out set and seed
    assert torch.equal(before[0], torch.get_rng_state())
    assert np.array_equal(before[1], np.random.get_state()[1]) and before[2] == random.getstate()


def test_tiny_fid_with_a_stand_in_network(tiny_data, tmp_path, standin_path, monkeypatch):
    """FID-k against a data set reference (cached), with the stand-in Inception: logged, and training
    unchanged against the same run without evaluation."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DITLAB_INCEPTION", str(standin_path))
    fid_run = tmp_path / "fid"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stand-in's sha256 is not the real network's
        train(tiny_data, fid_run, 4, "train.eval_every=2", "train.eval_metric=fid", f"train.eval_ref={tiny_data}",
              "train.eval_num=8", "sample.steps=2", "sample.sampler=euler")
    plain = tmp_path / "plain"
    train(tiny_data, plain, 4)
    logged = evals(fid_run, "fid")
    assert sorted(logged) == [2, 4] and all(math.isfinite(v) and v > 0 for v in logged.values())
    assert read_best_pointer(fid_run)["metric"] == "fid"
    assert train_losses(fid_run) == train_losses(plain)


# ---- every metric on its kind -------------------------------------------------------------------------
SUPERRES = ["task.kind=superres", "model.arch=DiT-S/4", "model.hidden_size=32", "model.depth=1", "model.num_heads=2",
            "model.num_classes=0", "train.batch_size=8", "sample.steps=1", "sample.sampler=euler"]
ICL = ["task.kind=icl", "icl.d=3", "icl.n_points=5", "icl.sigma=0.5", "icl.d_start=1", "icl.points_start=2",
       "icl.curriculum_every=2", "model.hidden_size=16", "model.depth=1", "model.num_heads=2",
       "diffusion.num_timesteps=50", "train.batch_size=8", "sample.steps=2"]
SCENE = ["scene.num_scenes=16", "scene.objects=[1,3]", "scene.points_per_object=[8,24]",
         "scene.num_target_points=6", "scene.target_pool=12", "scene.fourier_bands=2", "model.hidden_size=32",
         "model.depth=2", "model.num_heads=4", "train.batch_size=4", "sample.steps=2"]


@pytest.mark.parametrize("preset, extra, metric", [
    (None, SUPERRES, "psnr"),
    (None, SUPERRES, "collapse"),
    (None, SUPERRES, "loss"),
    (None, ICL, "icl_error_ratio"),
    (None, ICL, "loss"),
    ("configs/scene_small.yaml", SCENE, "loss"),
])
def test_each_metric_runs_on_its_kind_without_changing_training(tiny_data, tmp_path, preset, extra, metric):
    def cfg(run, *more):
        data = [f"data.path={tiny_data}"] if extra is SUPERRES else []  # scene and icl draw their own data
        return load_config(preset, [*data, "train.device=cpu", "train.log_every=1",
                                    "train.sample_every=0", "train.ckpt_every=5", "train.steps=4", "train.eval_num=8",
                                    "train.compile=false", f"train.run_dir={run}", *extra, *more])

    assert Trainer(cfg(tmp_path / "on", "train.eval_every=2", f"train.eval_metric={metric}"), progress=False).run() == 0
    assert Trainer(cfg(tmp_path / "off"), progress=False).run() == 0
    logged = evals(tmp_path / "on", metric)
    assert sorted(logged) == [2, 4] and all(math.isfinite(v) for v in logged.values()), logged
    assert read_best_pointer(tmp_path / "on")["mode"] == ("max" if METRICS[metric].higher_is_better else "min")
    assert train_losses(tmp_path / "on") == train_losses(tmp_path / "off")


# ---- DDP: rank 0 evaluates, the others wait ---------------------------------------------------------
def test_two_process_run_evaluates_on_rank0_and_trains_as_without(tiny_data, tmp_path):
    from tests.train.test_distributed import torchrun, train_args

    on, off = tmp_path / "on", tmp_path / "off"
    torchrun(2, *train_args(tiny_data, on, 4, "train.eval_every=2", "train.eval_num=8", "train.ckpt_every=5"))
    torchrun(2, *train_args(tiny_data, off, 4, "train.ckpt_every=5"))
    assert sorted(evals(on)) == [2, 4]  # one line per eval step, not one per rank
    assert read_best_pointer(on)["checkpoint"] in ("step_00000002", "step_00000004")
    assert train_losses(on) == train_losses(off)
    for which in ("model", "ema"):
        a, b = load_weights(on, which), load_weights(off, which)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_stop_early_together(tiny_data, tmp_path):
    """train.eval_patience under DDP: rank 0 counts, every rank stops at the same step (no rank left waiting in
    a collective). At lr 0 the weights and the held-out loss never change, so the second evaluation is no
    improvement and patience 1 stops the run there."""
    from tests.train.test_distributed import torchrun, train_args

    run = tmp_path / "r"
    torchrun(2, *train_args(tiny_data, run, 6, "train.eval_every=1", "train.eval_num=8", "train.eval_patience=1",
                            "optim.lr=0", "optim.warmup_steps=0"))
    assert sorted(evals(run)) == [1, 2] and len(set(evals(run).values())) == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["stopped_early"] == {"step": 2, "patience": 1}


LIFT = ["task.kind=lift", "model.arch=DiT-S/4", "model.hidden_size=32", "model.depth=1", "model.num_heads=2",
        "model.num_classes=0", "lift.train_mode=clean_lo", "train.batch_size=8", "sample.steps=2", "sample.sampler=euler"]


@pytest.mark.parametrize("extra", [SUPERRES, LIFT], ids=["superres", "lift"])
def test_fid_on_the_other_image_kinds(tiny_data, tmp_path, standin_path, monkeypatch, extra):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DITLAB_INCEPTION", str(standin_path))
    cfg = load_config(None, [f"data.path={tiny_data}", "train.device=cpu", "train.log_every=1", "train.sample_every=0",
                             "train.ckpt_every=5", "train.steps=2", "train.eval_every=2", "train.eval_num=8",
                             "train.eval_metric=fid", f"train.eval_ref={tiny_data}", f"train.run_dir={tmp_path / 'r'}",
                             *extra])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stand-in's sha256 is not the real network's
        assert Trainer(cfg, progress=False).run() == 0
    assert math.isfinite(evals(tmp_path / "r", "fid")[2])


def test_data_eval_path_is_the_held_out_set(tiny_data, tmp_path):
    rng = np.random.default_rng(1)
    held = tmp_path / "held.npz"
    np.savez(held, images=rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), labels=np.arange(6) % 4)
    trainer = Trainer(tiny_cfg(tiny_data, tmp_path / "r", "train.steps=2", "train.eval_every=2",
                               f"data.eval_path={held}"), progress=False)
    ctx = trainer.evaluator.ctx
    assert ctx.data is not trainer.data and ctx.data.num_examples == 6 and len(ctx.indices) == 6
    assert trainer.run() == 0 and sorted(evals(tmp_path / "r")) == [2]


@pytest.mark.parametrize("extra, message", [
    (ICL + ["data.eval_path=x.npz"], "data.eval_path applies to task.kind image, superres or lift"),
    (ICL + ["train.eval_metric=collapse"], "train.eval_metric=collapse does not apply to task.kind=icl"),
    (SCENE + ["task.kind=scene", "scene.eval_seed=0", "scene.seed=0"], "scene.eval_seed equals scene.seed"),
])
def test_other_config_errors(tmp_path, extra, message):
    cfg = load_config(None, ["train.device=cpu", "train.eval_every=2", f"train.run_dir={tmp_path / 'r'}", *extra])
    with pytest.raises(ValueError, match=message):
        Trainer(cfg, progress=False)


@pytest.mark.parametrize("compile_step, when", [("true", "auto"), ("false", "off")])
def test_evaluation_samples_compiled_by_the_sample_commands_rule(tiny_data, tmp_path, monkeypatch, compile_step,
                                                                 when):
    """With train.compile the evaluation's generation follows `ditlab sample --compile auto` (a long run's FID-10k
    every few thousand steps, eagerly, would cost more than its training); without it, nothing is compiled."""
    import ditlab.train.evaluation as evaluation_module

    calls = []

    def recorder(model, device, num, how):
        calls.append((str(device), num, how))
        return model

    monkeypatch.setattr(evaluation_module, "compile_for_sampling", recorder)
    cfg = tiny_cfg(tiny_data, tmp_path / "run", "train.steps=2", "train.eval_every=2", f"train.compile={compile_step}")
    Trainer(cfg, progress=False)  # builds the evaluator; torch.compile itself is lazy, nothing compiles here
    assert calls == [("cpu", 16, when)]

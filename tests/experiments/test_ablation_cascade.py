"""`ditlab ablate` with LIFT's cascade path: lo_variant in the ablation file, the low-resolution variant trained
first, the shipped plan's new rows, and a tiny cascade ablation end to end on the CPU."""
import json

import numpy as np
import pytest

from ditlab.cli import main
from ditlab.configlib import ConfigError
from ditlab.experiments.ablation import AblationRunner, check_variants, order_variants
from ditlab.experiments.ablation_spec import load_ablation

from tests.experiments.test_ablation import TINY, write_study  # the same tiny base config

SPEC = """\
config: tiny.yaml
seeds: [0]
budget: {steps: 2}
sample: {num: 5, seed: 3, sampler: euler, steps: 2, batch_size: 3}
variants:  # joint: the cascade first, so that the diagonal is scored after it on the same loaded run
  joint: {overrides: [task.kind=lift, lift.train_mode=clean_lo], paths: [cascade, diagonal], lo_variant: small}
  small: {overrides: [task.kind=image, data.image_size=8], paths: [default]}
"""


def test_shipped_plan_has_the_new_rows_in_order():
    spec = load_ablation("configs/ablations/lift.yaml")
    check_variants(spec, ["data.path=unused"])
    by_name = {v.name: v for v in spec.variants}
    assert "task.kind=image" in by_name["baseline_lo"].overrides
    assert "data.image_size=16" in by_name["baseline_lo"].overrides
    assert {"lo-oracle", "cascade"} <= set(by_name["lift_hi_only"].paths)  # H1 on the oracle and the cascade
    assert "lift.beta=0" in by_name["lift_hi_only"].overrides
    for name in ("lift", "lift_hi_only", "lift_clean_lo"):
        assert "cascade" in by_name[name].paths and by_name[name].lo_variant == "baseline_lo"
    order = [v.name for v in order_variants(spec.variants)]
    assert order.index("baseline_lo") < min(order.index(n) for n in ("lift", "lift_hi_only", "lift_clean_lo"))
    assert order[0] == "baseline" and sorted(order) == sorted(by_name)  # nothing lost or doubled


def test_lo_variant_trains_first_and_bad_files_are_named(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "a.yaml").write_text(SPEC)
    spec = load_ablation(tmp_path / "a.yaml")
    runner = AblationRunner(spec, tmp_path / "out", scorer=None, device="cpu")
    assert [u.name for u in runner.units] == ["small-s0", "joint-s0"]  # small moved before the cascade needing it
    bad = {
        "cascade without lo_variant": ("joint: {overrides: [task.kind=lift], paths: [cascade]}", ConfigError,
                                       "cascade path and lo_variant go together"),
        "unknown lo_variant": ("joint: {overrides: [task.kind=lift], paths: [cascade], lo_variant: nope}",
                               ConfigError, "lo_variant: 'nope' is not another variant"),
        "wrong size": ("joint: {overrides: [task.kind=lift, data.image_size=16], paths: [cascade], lo_variant: "
                       "small}\n  small: {overrides: [task.kind=image, data.image_size=16]}", ValueError,
                       "lo_variant small must set data.image_size=8"),
        "not an image run": ("joint: {overrides: [task.kind=lift], paths: [cascade], lo_variant: small}\n"
                             "  small: {overrides: [task.kind=lift, data.image_size=8]}", ValueError,
                             "lo_variant small is task.kind=lift"),
    }
    for name, (variants, err, message) in bad.items():
        (tmp_path / "b.yaml").write_text(f"config: tiny.yaml\nvariants:\n  {variants}\n")
        with pytest.raises(err, match=message):
            check_variants(load_ablation(tmp_path / "b.yaml"), [])


def test_cascade_ablation_end_to_end(tmp_path, monkeypatch):
    data, net = write_study(tmp_path, monkeypatch, SPEC, 16)
    out = tmp_path / "out"
    args = ["ablate", str(tmp_path / "ablation.yaml"), "--out", str(out), "--ref", str(data), "--inception",
            str(net), "--set", f"data.path={data}", "--device", "cpu"]
    # --only the LIFT variant: its cascade trains the low-resolution run it needs (without scoring it)
    assert main(args + ["--only", "joint"]) == 0
    assert (out / "runs" / "small-s0" / "summary.json").exists()
    assert not (out / "scores" / "small-s0__default.json").exists()
    record = json.loads((out / "scores" / "joint-s0__cascade.json").read_text())
    assert record["lo_run"] == str(out / "runs" / "small-s0") and record["lo_nfe"] == 2
    assert record["nfe"] == 4 and record["fid"] > 0  # both models' evaluations
    assert (out / "grids" / "joint-s0__cascade.png").exists()
    # The diagonal is scored after the cascade on the same loaded run: the low-resolution run was detached.
    assert json.loads((out / "scores" / "joint-s0__diagonal.json").read_text())["nfe"] == 2
    # The ablation's runs work with `ditlab sample --path cascade --lo-run` as well.
    s = tmp_path / "s.npz"
    assert main(["sample", str(out / "runs" / "joint-s0"), "--path", "cascade", "--lo-run",
                 str(out / "runs" / "small-s0"), "--num", "5", "--seed", "3", "--sampler", "euler", "--steps", "2",
                 "--device", "cpu", "--out", str(s)]) == 0
    assert np.load(s)["arr_0"].shape == (5, 16, 16, 3)
    # Then the rest: the low-resolution run is not trained again.
    import ditlab.train.trainer as trainer_module

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trainer_module.Trainer, "run", no_training)
    assert main(args) == 0
    assert (out / "scores" / "small-s0__default.json").exists()
    assert "| joint | cascade |" in (out / "results.md").read_text()

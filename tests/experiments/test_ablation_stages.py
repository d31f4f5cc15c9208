"""`ditlab ablate` for a recipe search (issue 18): named evals (sample settings per score), stages (screen
everything, then the best ones longer) and time-to-FID from FID measured during training, on the CPU with
a stand-in FID network."""
import csv
import dataclasses
import json

import pytest

from ditlab.cli import main
from ditlab.configlib import ConfigError
from ditlab.experiments.ablation import check_variants
from ditlab.experiments.ablation_spec import load_ablation
from ditlab.experiments.promotion import promoted
from ditlab.experiments.stages import ranking, stage_spec

from tests.experiments.test_ablation import fake_clock, write_study
from tests.experiments.test_promotion import COMBINE, ROUTED, load_config_of

EVALS = """\
config: tiny.yaml
seeds: [0]
budget: {steps: 2}
sample: {num: 6, seed: 3, sampler: euler, steps: 3, batch_size: 4}
evals:
  e3: {}
  h2: {sampler: heun, steps: 2}
variants:
  single: {overrides: [task.kind=image, model.output_init=xavier]}  # not the zero output of adaLN-Zero at init
  only_e3: {overrides: [task.kind=image, optim.lr=3e-4], evals: [e3]}
"""

STAGES = """\
config: tiny.yaml
seeds: [0]
sample: {num: 6, seed: 3, sampler: euler, steps: 2, batch_size: 4}
stages:
  screen: {steps: 1}
  final: {steps: 2, seeds: [0, 1], top: 1, keep: [base], num: 4}
variants:
  base: {overrides: [task.kind=image]}
  hot: {overrides: [task.kind=image, optim.lr=1e-2]}
  cold: {overrides: [task.kind=image, optim.lr=1e-6]}
"""

TIMED = """\
config: tiny.yaml
seeds: [0]
budget: {steps: 3, eval_every: 1, eval_num: 4}
sample: {num: 6, seed: 3, sampler: euler, steps: 2, batch_size: 4}
time_to_fid: [1000000, 0.001]
variants:
  single: {overrides: [task.kind=image]}
"""


def _args(tmp_path, data, net):
    return ["ablate", str(tmp_path / "ablation.yaml"), "--out", str(tmp_path / "out"), "--ref", str(data),
            "--inception", str(net), "--set", f"data.path={data}", "--device", "cpu"]


def test_named_evals_score_each_setting(tmp_path, monkeypatch):
    data, net = write_study(tmp_path, monkeypatch, EVALS, 8)
    out = tmp_path / "out"
    assert main(_args(tmp_path, data, net)) == 0
    names = sorted(p.name for p in (out / "scores").glob("*.json"))
    assert names == ["only_e3-s0__default__e3.json", "single-s0__default__e3.json", "single-s0__default__h2.json"]
    h2 = json.loads((out / "scores" / "single-s0__default__h2.json").read_text())
    e3 = json.loads((out / "scores" / "single-s0__default__e3.json").read_text())
    assert (h2["eval"], h2["sampler"], h2["steps"], h2["nfe"]) == ("h2", "heun", 2, 3)
    assert (e3["eval"], e3["sampler"], e3["steps"], e3["nfe"]) == ("e3", "euler", 3, 3)
    assert h2["fid"] != e3["fid"]  # a different sampler, different samples
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["variant"], r["eval"]) for r in rows] == [("single", "e3"), ("single", "h2"), ("only_e3", "e3")]
    table = (out / "results.md").read_text()
    assert "| single | default / h2 |" in table and "**h2** heun 2 steps" in table
    assert (out / "grids" / "single-s0__default__h2.png").exists()


def test_a_unit_trained_again_is_scored_again_whole(tmp_path, monkeypatch, capsys):
    """Scores restored onto a machine where the run is gone (speedrun_study.sh restore): a unit with one of its
    scores missing is trained again, and its other score is dropped and redone, never mixed with the new run's."""
    import shutil

    data, net = write_study(tmp_path, monkeypatch, EVALS, 8)
    out = tmp_path / "out"
    assert main(_args(tmp_path, data, net)) == 0
    kept = out / "scores" / "single-s0__default__e3.json"
    json_before = json.loads(kept.read_text())
    json_before["fid"] = -1.0  # mark the old score: it must not survive
    kept.write_text(json.dumps(json_before))
    (out / "scores" / "single-s0__default__h2.json").unlink()
    shutil.rmtree(out / "runs" / "single-s0")
    capsys.readouterr()
    assert main(_args(tmp_path, data, net)) == 0
    assert "single-s0 is trained again" in capsys.readouterr().out
    assert json.loads(kept.read_text())["fid"] > 0
    assert (out / "scores" / "single-s0__default__h2.json").exists()


def refused(tmp_path, text: str, match: str) -> None:
    """An ablation file "config: tiny.yaml" + ``text`` is refused at load with an error matching ``match``."""
    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "a.yaml").write_text("config: tiny.yaml\n" + text)
    with pytest.raises(ConfigError, match=match):
        load_ablation(tmp_path / "a.yaml")


def test_bad_evals_stages_and_thresholds_are_named(tmp_path):
    def bad(text, match):
        refused(tmp_path, text, match)

    bad("evals: {e: {num: 3}}\nvariants: {v: {}}\n", "evals.e.num")
    bad("evals: {e: {cfg_interval: [2, 1]}}\nvariants: {v: {}}\n", "evals.e.cfg_interval")
    bad("evals: {e: {}}\nvariants: {v: {evals: [f]}}\n", "variants.v.evals")
    bad("stages: {s: {top: 2}}\nvariants: {v: {}}\n", "stages.s.top")
    bad("stages: {s: {}, t: {top: 1, keep: [w]}}\nvariants: {v: {}}\n", "stages.t.keep")
    bad("stages: {s: {}, t: {rank_by: e}}\nvariants: {v: {}}\n", "stages.t.rank_by")
    bad("stages: {s: {time_limt: 3}}\nvariants: {v: {}}\n", "stages.s.time_limt")
    bad("stages: {runs: {}}\nvariants: {v: {}}\n", "stage name")
    bad("time_to_fid: [10]\nvariants: {v: {}}\n", "time_to_fid needs FID during training")
    bad("budget: {eval_every: -1}\nvariants: {v: {}}\n", "budget")
    bad("stages: {s: {skip: [w]}}\nvariants: {v: {}}\n", "stages.s.skip: 'w' is not a variant")
    bad("stages: {s: {skip: [w]}}\nvariants: {v: {}, w: {}}\n", "'w' is kept by no later stage")
    bad("stages: {s: {skip: [v, w]}, t: {keep: [v, w]}}\nvariants: {v: {}, w: {}}\n", "leaves no variant")
    bad("stages: {s: {}, t: {keep: [w], skip: [w]}}\nvariants: {v: {}, w: {}}\n", "both kept and skipped")
    bad("stages: {s: {}, t: {top: 1, leave_one_out: true}}\nvariants: {v: {}}\n", "stages.t.leave_one_out")
    bad("stages: {s: {}, t: {top: 1, combine: 2, leave_one_out: 1}}\nvariants: {v: {}}\n", "stages.t.leave_one_out")


def test_stages_screen_then_promote_the_best(tmp_path, monkeypatch, capsys):
    data, net = write_study(tmp_path, monkeypatch, STAGES, 8)
    out = tmp_path / "out"
    args = _args(tmp_path, data, net)
    assert main(args + ["--stage", "final"]) == 1
    assert "stage screen is not complete" in capsys.readouterr().err
    assert main(args + ["--seeds", "3"]) == 1
    assert "--seeds 3: a file with stages names each stage's seeds; name the stage" in capsys.readouterr().err
    assert main(args + ["--stage", "screen"]) == 0
    assert not (out / "final").exists()
    spec = load_ablation(tmp_path / "ablation.yaml")
    check_variants(spec, [])  # the default paths, as the runner fills them in
    screen = stage_spec(spec, spec.stages[0], spec.variants)
    ranked = ranking(screen, out / "screen", "")
    assert sorted(v for v, _, _ in ranked) == ["base", "cold", "hot"]
    assert [f for _, f, _ in ranked] == sorted(f for _, f, _ in ranked)
    chosen = {v.name for v in promoted(spec, spec.stages[1], ranked)}
    assert chosen == {ranked[0][0], "base"}

    assert main(args) == 0  # the screen is skipped (done), the final stage runs
    final_runs = sorted(p.name for p in (out / "final" / "runs").iterdir())
    assert final_runs == sorted(f"{v}-s{s}" for v in chosen for s in (0, 1))
    record = json.loads(next((out / "final" / "scores").glob("*.json")).read_text())
    assert record["num_samples"] == 4 and record["train_steps"] == 2  # the stage's num and budget
    stages_md = (out / "stages.md").read_text()
    assert "## screen -> final" in stages_md and "| 1 | " + ranked[0][0] in stages_md
    assert (out / "screen" / "results.md").exists() and (out / "final" / "results.md").exists()


def test_a_stage_after_the_budget_ran_out_is_named(tmp_path, monkeypatch, capsys):
    """The screen's last unit ends past --budget-s: the next stage does not start, and the command says which and
    why before its "work left" line (it said only that there was work left)."""
    import shutil

    import ditlab.experiments.stages as stages_module

    data, net = write_study(tmp_path, monkeypatch, STAGES, 8)
    out = tmp_path / "out"
    args = _args(tmp_path, data, net)
    assert main(args + ["--stage", "screen"]) == 0
    shutil.rmtree(out / "screen" / "runs" / "cold-s0")  # the screen's last unit to do again, as on a new machine
    for score in (out / "screen" / "scores").glob("cold-s0*"):
        score.unlink()
    clock = fake_clock(monkeypatch, train_s=100.0)
    monkeypatch.setattr(stages_module, "time", clock)
    capsys.readouterr()
    assert main(args + ["--budget-s", "50"]) == 3  # cold-s0 is the first work; it ends 100 s in
    printed = capsys.readouterr().out
    assert list((out / "screen" / "scores").glob("cold-s0*")) and not (out / "final").exists()
    assert "ditlab ablate: stage final not started: --budget-s is used up; the next command starts it" in printed
    assert printed.rstrip().endswith("ditlab ablate: stopped with work left; run the same command again")


def test_seeds_with_stage_adds_a_seed_to_that_stages_units(tmp_path, monkeypatch, capsys):
    """--stage NAME --seeds S: that stage's units (under --only, the named ones) train on S instead of its seeds, as
    --seeds does for a file without stages: a third seed for a pair two seeds cannot settle (SwiGLU's leave-one-out,
    thirty-second session). Its tables keep every seed; the earlier stage and the file's stages.md are untouched."""
    data, net = write_study(tmp_path, monkeypatch, STAGES, 8)
    out = tmp_path / "out"
    args = _args(tmp_path, data, net)
    assert main(args) == 0
    before = {p.name for p in (out / "final" / "runs").iterdir()}
    screen_scores = sorted(p.name for p in (out / "screen" / "scores").iterdir())
    plan = ["ablate", str(tmp_path / "ablation.yaml"), "--out", str(out), "--plan"]
    capsys.readouterr()
    assert main(plan + ["--seeds", "2"]) == 1  # as the runner: the stage is named
    assert "--seeds 2: a file with stages names each stage's seeds" in capsys.readouterr().err
    assert main(plan + ["--stage", "final", "--only", "base", "--seeds", "2"]) == 0  # the command's plan
    assert "stage final: 2 steps per run, seeds [2], 1 variants -> 1 runs: 0 trained (0 with scores left), 1 to " \
           "train" in capsys.readouterr().out
    assert main(args + ["--stage", "final", "--only", "base", "--seeds", "2"]) == 0
    assert "variants x 1 seeds, 2 steps) in" in capsys.readouterr().out  # seed 2 only
    assert {p.name for p in (out / "final" / "runs").iterdir()} == before | {"base-s2"}
    assert sorted(p.name for p in (out / "screen" / "scores").iterdir()) == screen_scores
    rows = list(csv.DictReader((out / "final" / "results.csv").open()))
    assert sorted(int(r["seed"]) for r in rows if r["variant"] == "base") == [0, 1, 2]
    results = (out / "final" / "results.md").read_text()
    assert "training seeds [0, 1, 2]" in results
    assert "| final | 2 steps | 0, 1 |" in (out / "stages.md").read_text()  # the file's seeds
    assert main(args + ["--stage", "final", "--only", "base", "--seeds", "2"]) == 0  # done: nothing trains again
    assert {p.name for p in (out / "final" / "runs").iterdir()} == before | {"base-s2"}


def test_only_names_a_later_stages_own_variants_under_stage(tmp_path, monkeypatch, capsys):
    """--stage final --only base: the final stage as the screen's ranking made it, but only base's units (a
    session that holds a few units runs first those a decision waits for); without --stage, --only narrows the
    first stage. --plan takes both and means the same."""
    data, net = write_study(tmp_path, monkeypatch, STAGES.replace("top: 1, keep: [base]", "top: 2, keep: [base]"), 8)
    out = tmp_path / "out"
    args = _args(tmp_path, data, net)
    plan = ["ablate", str(tmp_path / "ablation.yaml"), "--out", str(out), "--plan"]
    assert main(plan + ["--stage", "final", "--only", "base"]) == 1  # its variants wait for the screen's ranking
    assert "variants are not known until stage screen is complete" in capsys.readouterr().err
    assert main(plan + ["--only", "nope"]) == 1  # --plan checks the names as the runner does
    assert "--only nope: no such variant" in capsys.readouterr().err
    assert main(args + ["--stage", "screen"]) == 0
    assert main(args + ["--stage", "final", "--only", "nope"]) == 1
    err = capsys.readouterr().err
    assert "--stage final --only nope: stage final has no such variant; it has [" in err and "'base'" in err
    assert main(plan + ["--stage", "final", "--only", "base"]) == 0
    assert "stage final: 2 steps per run, seeds [0, 1], 1 variants -> 2 runs: 0 trained" in capsys.readouterr().out
    assert main(args + ["--stage", "final", "--only", "base"]) == 0  # done: what was asked for is complete
    assert "only base" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "final" / "runs").iterdir()) == ["base-s0", "base-s1"]
    assert main(plan) == 0
    text = capsys.readouterr().out
    import re

    found = re.search(r"stage final: 2 steps per run, seeds \[0, 1\], ([23]) variants -> \d runs: 2 trained", text)
    assert found  # the screen's top 2 and base (one of them, maybe): the rest waits
    assert main(args) == 0  # the whole study goes on from there
    assert len(list((out / "final" / "runs").iterdir())) == 2 * int(found.group(1))
    assert "| base | default |" in (out / "final" / "results.md").read_text()


def test_a_skipped_variant_is_not_screened_and_joins_where_it_is_kept(tmp_path, monkeypatch):
    """``skip`` on the first stage: the variant is neither trained nor ranked there; the final stage's keep
    takes it in beside the ranking's best (a question only the longer budget answers, e.g. EMA lengths)."""
    data, net = write_study(tmp_path, monkeypatch, STAGES.replace(
        "screen: {steps: 1}", "screen: {steps: 1, skip: [cold]}").replace("keep: [base]", "keep: [base, cold]"), 8)
    out = tmp_path / "out"
    assert main(_args(tmp_path, data, net)) == 0
    assert sorted(p.name for p in (out / "screen" / "runs").iterdir()) == ["base-s0", "hot-s0"]
    spec = load_ablation(tmp_path / "ablation.yaml")
    check_variants(spec, [])
    ranked = ranking(stage_spec(spec, spec.stages[0], spec.variants), out / "screen", "")
    assert sorted(v for v, _, _ in ranked) == ["base", "hot"]
    assert sorted(p.name for p in (out / "final" / "runs").iterdir()) == sorted(
        f"{v}-s{s}" for v in {ranked[0][0], "base", "cold"} for s in (0, 1))
    assert "| screen | 1 steps | 0 | all but cold |" in (out / "stages.md").read_text()


STAGE_EVALS = """\
config: tiny.yaml
seeds: [0]
sample: {num: 6, seed: 3, sampler: euler, steps: 2, batch_size: 4}
evals:
  e2: {}
  h2: {sampler: heun, steps: 2}
stages:
  screen: {steps: 1, evals: [e2]}
  final: {steps: 1, top: 1, rank_by: e2}
variants:
  base: {overrides: [task.kind=image]}
  hot: {overrides: [task.kind=image, optim.lr=1e-2], evals: [e2, h2]}
"""


def test_a_stage_scores_only_its_evals(tmp_path, monkeypatch):
    """screen scores e2 alone; the final stage, naming none, scores every eval of the variants it takes."""
    data, net = write_study(tmp_path, monkeypatch, STAGE_EVALS, 8)
    out = tmp_path / "out"
    assert main(_args(tmp_path, data, net)) == 0
    screen = sorted(p.name for p in (out / "screen" / "scores").glob("*.json"))
    assert screen == ["base-s0__default__e2.json", "hot-s0__default__e2.json"]
    final = sorted(p.name for p in (out / "final" / "scores").glob("*.json"))
    assert len(final) == 2 and {n.split("__")[-1] for n in final} == {"e2.json", "h2.json"}
    spec = load_ablation(tmp_path / "ablation.yaml")
    assert spec.stages[0].evals == ["e2"] and spec.stages[1].evals == []


def test_the_curve_ends_with_the_runs_score_when_it_measures_the_same(tmp_path, monkeypatch):
    """eval_every seldom lands on a run's last step: the score of the eval that FID during training used (the first),
    with as many samples, is the curve's last point, in every score of the run (time to FID reads it too)."""
    spec = EVALS.replace("budget: {steps: 2}", "budget: {steps: 4, eval_every: 3, eval_num: 6}")
    data, net = write_study(tmp_path, monkeypatch, spec + "time_to_fid: [1000000]\n", 8)
    out = tmp_path / "out"
    assert main(_args(tmp_path, data, net) + ["--only", "single"]) == 0
    e3, h2 = (json.loads((out / "scores" / f"single-s0__default__{e}.json").read_text()) for e in ("e3", "h2"))
    assert [c[1] for c in e3["eval_curve"]] == [3, 4]  # step 3 during training, step 4 the end's score
    assert e3["eval_curve"][-1][2] == e3["fid"] and e3["curve_end_from_score"]
    assert e3["eval_curve"][-1][0] >= e3["eval_curve"][0][0]  # the training clock's seconds at the end
    assert h2["eval_curve"] == e3["eval_curve"]  # the same curve in the run's other score
    # ... but its times to FID are e3's alone: h2 samples with other settings than the curve did
    assert e3["time_to_fid"] == {"1e+06": e3["eval_curve"][0][0]} and "time_to_fid" not in h2
    rows = {r["eval"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["e3"]["time_to_fid_1e+06"] == str(e3["eval_curve"][0][0]) and rows["h2"]["time_to_fid_1e+06"] == "n/a"
    table = (out / "results.md").read_text()
    assert "with the **e3** eval's settings" in table
    assert "| single | default / h2 |" in table and "| n/a |" in table.split("| single | default / h2 |")[1].split("\n")[0]
    # a score file written before 2026-12-07 carries the curve's times in every score of the run: the report
    # leaves them to the curve's eval
    h2_file = out / "scores" / "single-s0__default__h2.json"
    h2_file.write_text(json.dumps({**h2, "time_to_fid": e3["time_to_fid"]}))
    assert main(["ablate", str(tmp_path / "ablation.yaml"), "--out", str(out), "--report"]) == 0
    rows = {r["eval"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["h2"]["time_to_fid_1e+06"] == "n/a" and rows["e3"]["time_to_fid_1e+06"] != "n/a"
    # another sample count than the evaluations during training: the curve stays theirs
    (tmp_path / "ablation.yaml").write_text(spec.replace("eval_num: 6", "eval_num: 4") + "time_to_fid: [1000000]\n")
    other = tmp_path / "other"
    args = _args(tmp_path, data, net)
    assert main(args[:2] + ["--out", str(other)] + args[4:] + ["--only", "single"]) == 0
    record = json.loads((other / "scores" / "single-s0__default__e3.json").read_text())
    assert [c[1] for c in record["eval_curve"]] == [3] and "curve_end_from_score" not in record


def test_bad_stage_evals_are_named(tmp_path):
    def bad(text, match):  # at load: not when the stage is reached
        refused(tmp_path, "evals: {e: {}, f: {steps: 3}}\n" + text, match)

    bad("stages: {s: {evals: [g]}}\nvariants: {v: {}}\n", "stages.s.evals: 'g' is not in evals")
    bad("stages: {s: {evals: [e]}, t: {rank_by: f}}\nvariants: {v: {}}\n", "stages.t.rank_by: 'f' ranks stage s")
    bad("stages: {s: {evals: [e]}}\nvariants: {v: {evals: [f]}}\n", "leaves variant v .* nothing to score")
    bad("stages: {s: {}, t: {evals: [e], top: 1}}\nvariants: {v: {}, w: {evals: [f]}}\n",
        "stages.t.evals .* leaves variant w")


def test_time_to_fid_from_fid_during_training(tmp_path, monkeypatch):
    data, net = write_study(tmp_path, monkeypatch, TIMED, 8)
    monkeypatch.delenv("DITLAB_INCEPTION", raising=False)
    out = tmp_path / "out"
    assert main(_args(tmp_path, data, net)) == 0
    cfg = json.loads((out / "runs" / "single-s0" / "config.json").read_text()) \
        if (out / "runs" / "single-s0" / "config.json").exists() else None
    record = json.loads((out / "scores" / "single-s0__default.json").read_text())
    curve = record["eval_curve"]
    assert [c[1] for c in curve] == [1, 2, 3]  # an evaluation at every step
    assert all(c[2] > 0 for c in curve)
    seconds = [c[0] for c in curve]
    assert seconds == sorted(seconds)
    assert record["time_to_fid"] == {"1e+06": curve[0][0], "0.001": None}  # reached at once; never
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert rows[0]["time_to_fid_1e+06"] == str(curve[0][0]) and rows[0]["time_to_fid_0.001"] == ""
    table = (out / "results.md").read_text()
    assert "s to FID 1e+06" in table and "| — |" in table and f"| ≤{curve[0][0]:.0f} |" in table  # the first
    assert (out / "results_curves.png").exists()
    # a constant learning rate: the curve is the budget each quality needs; a decaying one's is its schedule's
    assert record["lr_decay"] == "constant" and "These times are of this run's schedule" not in table
    score = out / "scores" / "single-s0__default.json"
    score.write_text(json.dumps({**record, "lr_decay": "cosine"}))
    assert main(["ablate", str(tmp_path / "ablation.yaml"), "--out", str(out), "--report"]) == 0
    assert "its learning rate decays over its whole budget (optim.decay: cosine)" in (out / "results.md").read_text()
    assert cfg is None or cfg["train"]["eval_metric"] == "fid"


def test_shipped_speedrun_plan_is_valid():
    """configs/ablations/speedrun.yaml: every variant's overrides are real trainer keys, every eval a real
    sampler setting, and the stages chain (screen -> stack -> final -> long)."""
    from pathlib import Path

    from ditlab.diffusion.samplers import SAMPLERS
    from ditlab.experiments.ablation import variant_config

    spec = load_ablation("configs/ablations/speedrun.yaml")
    check_variants(spec, [])
    assert [s.name for s in spec.stages] == ["screen", "stack", "final", "long"]
    screen_, stack, final, long = spec.stages
    assert final.seeds == [0, 1] and "baseline" in final.keep
    assert long.budget.eval_every > 0 and spec.time_to_fid == [10, 7, 5]
    # screen on the eval that ranks; the long stage's end scores on the headline pair
    assert screen_.evals == ["cfg"] and final.rank_by == "cfg"
    assert long.evals == ["cfg", "nocfg"]
    # the long run fits one session's 30 device minutes: 15 of training, evaluations off the clock
    assert long.budget.time_limit <= 900 and long.num == long.budget.eval_num == 10_000
    # the stacking round repeats the screen's budget and sampling, so the best and the baseline keep their scores
    assert stack.stack and stack.top == 1 and stack.keep == ["baseline"]
    assert (stack.budget, stack.seeds, stack.num, stack.evals) == (screen_.budget, screen_.seeds, screen_.num,
                                                                   screen_.evals)
    # sampler and guidance settings on the final's best, the post-hoc EMA widths on the stack round's best
    assert "heun50_cfg" in final.best_evals and "posthoc_ema" in final.keep
    assert next(v for v in spec.variants if v.name == "posthoc_ema").on_best
    screen = stage_spec(spec, spec.stages[0], spec.variants)
    assert all([e for _, e, _ in screen.scores_of(v)] == ["cfg"] for v in screen.variants)
    assert all(e.sampler in SAMPLERS and e.steps * 2 - 1 <= 100 for e in spec.evals.values())
    for v in spec.variants:
        cfg = variant_config(spec, v, 0, Path("unused"), [], eval_ref="ref.npz")
        assert cfg.train.time_limit == spec.budget.time_limit and cfg.task.kind == "image"


def test_the_documented_dry_run_still_shrinks_the_plan():
    """docs/speedrun.md's CPU dry run edits configs/ablations/speedrun.yaml with sed: every pattern must still
    match, or the 'dry run' trains for minutes and scores FID-50k on the CPU."""
    import re
    from pathlib import Path

    doc, plan = Path("docs/speedrun.md").read_text(), Path("configs/ablations/speedrun.yaml").read_text()
    patterns = re.findall(r'-e "s([/#])(.*?)\1', doc)
    assert len(patterns) >= 6
    for _, pattern in patterns:
        literal = pattern.replace("\\[", "[").replace("\\]", "]")
        assert literal in plan, f"docs/speedrun.md's sed pattern {pattern!r} no longer matches the plan"


def test_a_training_stopped_by_sigterm_resumes_in_the_next_invocation(tmp_path, monkeypatch, capsys):
    import os
    import signal

    import ditlab.train.trainer as trainer_module

    data, net = write_study(tmp_path, monkeypatch, TIMED.replace("budget: {steps: 3, eval_every: 1, eval_num: 4}",
                                                                 "budget: {steps: 4}").replace(
        "time_to_fid: [1000000, 0.001]\n", ""), 8)
    out = tmp_path / "out"
    original = trainer_module.Trainer.train_step

    def step_then_sigterm(self):
        result = original(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as `timeout -s TERM` would, mid-training
        return result

    monkeypatch.setattr(trainer_module.Trainer, "train_step", step_then_sigterm)
    assert main(_args(tmp_path, data, net)) == 3  # stopped at a checkpoint: run again
    assert "was stopped by a signal" in capsys.readouterr().out
    run = out / "runs" / "single-s0"
    assert not (run / "summary.json").exists() and (run / "checkpoints" / "latest").exists()
    monkeypatch.setattr(trainer_module.Trainer, "train_step", original)
    assert main(_args(tmp_path, data, net)) == 0
    assert "resuming it from step_00000002" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and [s["end_step"] for s in summary["segments"]] == [2, 4]


def test_a_stopped_run_carried_to_another_machine_resumes_there(tmp_path, monkeypatch, capsys):
    """The long stage's carry (docs/speedrun.md): a run stopped by SIGTERM at a checkpoint, packed with
    speedrun_study.sh, unpacked into another study folder beside other copies of the data and the FID reference
    (another machine's paths), resumes there with the rest of its steps, keeps the FID curve measured before the
    stop, and is scored."""
    import os
    import shutil
    import signal
    import subprocess
    from pathlib import Path

    import ditlab.train.trainer as trainer_module

    data, net = write_study(tmp_path, monkeypatch, TIMED.replace("steps: 3, eval_every: 1", "steps: 4, eval_every: 1"), 8)
    original = trainer_module.Trainer.train_step

    def step_then_sigterm(self):
        result = original(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    def ablate(study, data):
        return main(["ablate", str(tmp_path / "ablation.yaml"), "--out", str(study / "long"), "--ref", str(data),
                     "--inception", str(net), "--set", f"data.path={data}", "--device", "cpu"])

    monkeypatch.setattr(trainer_module.Trainer, "train_step", step_then_sigterm)
    here = tmp_path / "here"
    assert ablate(here, data) == 3
    monkeypatch.setattr(trainer_module.Trainer, "train_step", original)
    script = Path(__file__).resolve().parents[2] / "scripts" / "speedrun_study.sh"
    tar, there = tmp_path / "long.tar", tmp_path / "there"
    for args in (("pack", str(here), str(tar)), ("unpack", str(tar), str(there))):
        done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    (tmp_path / "elsewhere").mkdir()
    moved = shutil.copy(data, tmp_path / "elsewhere" / "d.npz")
    shutil.rmtree(here)  # the first machine is gone
    capsys.readouterr()
    assert ablate(there, moved) == 0
    assert "resuming it from step_00000002" in capsys.readouterr().out
    run = there / "long" / "runs" / "single-s0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and [s["end_step"] for s in summary["segments"]] == [2, 4]
    score = json.loads((there / "long" / "scores" / "single-s0__default.json").read_text())
    assert [step for _, step, _ in score["eval_curve"]] == [1, 2, 3, 4]  # before the stop and after it


POSTHOC = """\
config: tiny.yaml
seeds: [0]
budget: {steps: 4}
sample: {num: 6, seed: 3, sampler: euler, steps: 2, batch_size: 4}
evals:
  ema: {}
  pe07: {ema_sigma_rel: 0.07}
variants:
  snap:
    overrides: [task.kind=image, model.output_init=xavier, "ema.posthoc_sigma_rels=[0.05, 0.1]", ema.posthoc_every=1]
"""


def test_an_eval_can_sample_the_posthoc_ema(tmp_path, monkeypatch):
    data, net = write_study(tmp_path, monkeypatch, POSTHOC, 8)
    out = tmp_path / "out"
    assert main(_args(tmp_path, data, net)) == 0
    run = out / "runs" / "snap-s0"
    assert (run / "checkpoints" / "posthoc_sr0.070").is_dir()  # reconstructed as `ditlab ema` would
    pe = json.loads((out / "scores" / "snap-s0__default__pe07.json").read_text())
    ema = json.loads((out / "scores" / "snap-s0__default__ema.json").read_text())
    assert pe["ema_sigma_rel"] == 0.07 and ema["ema_sigma_rel"] == 0.0
    # the reconstruction's profile fit (snapshots every step of 4 fit 0.07 closely); none for the classic EMA
    assert 0 < pe["posthoc_fit_error"] < 0.05 and "posthoc_fit_error" not in ema
    assert pe["fid"] != ema["fid"]  # other weights
    results = (out / "results.md").read_text()
    assert "post-hoc EMA sigma_rel 0.07" in results
    # the run's own EMA on the same scale, beside the post-hoc width: the demo preset's decay at the run's 4 steps
    from ditlab.config import read_saved_config
    from ditlab.train.ema import classic_sigma_rel

    own = read_saved_config(run / "config.yaml").ema
    assert (f"on the post-hoc scale (sigma_rel): snap-s0: ema.decay {own.decay:g} at 4 steps is "
            f"{classic_sigma_rel(own.decay, 4, own.warmup, own.every):.3f}.") in results


def test_a_posthoc_eval_needs_snapshots(tmp_path, monkeypatch, capsys):
    spec = POSTHOC.replace(', "ema.posthoc_sigma_rels=[0.05, 0.1]", ema.posthoc_every=1', "")
    data, net = write_study(tmp_path, monkeypatch, spec, 8)
    assert main(_args(tmp_path, data, net)) == 1
    assert "ema.posthoc_sigma_rels" in capsys.readouterr().err


def test_plan_says_what_is_done_and_what_is_left(tmp_path, monkeypatch, capsys):
    data, net = write_study(tmp_path, monkeypatch, STAGES, 8)
    out = tmp_path / "out"
    plan = ["ablate", str(tmp_path / "ablation.yaml"), "--out", str(out), "--plan"]
    assert main(plan) == 0
    text = capsys.readouterr().out
    assert "stage screen: 1 steps per run, seeds [0], 3 variants -> 3 runs: 0 trained" in text
    assert "stage final: 2 steps per run, seeds [0, 1]: waits for the stage before it; at most 2 variants" in text
    assert main(_args(tmp_path, data, net) + ["--stage", "screen"]) == 0
    capsys.readouterr()
    assert main(plan) == 0
    text = capsys.readouterr().out
    assert "3 runs: 3 trained (0 with scores left), 0 to train; scores 3/3" in text
    import re

    # the screen's best, and base (kept): one variant when base is the best
    found = re.search(r"stage final: 2 steps per run, seeds \[0, 1\], (\d) variants -> (\d) runs: 0 trained", text)
    assert found and found.group(1) in "12" and int(found.group(2)) == 2 * int(found.group(1))
    assert f"left in the known stages: {found.group(2)} trainings, {found.group(2)} scores" in text
    assert main(plan + ["--seeds", "1"]) == 1  # --plan runs nothing, so running flags are errors
    assert main(["ablate", str(tmp_path / "ablation.yaml"), "--out", str(out)]) == 1  # no --ref
    assert "--ref" in capsys.readouterr().err


def test_a_score_records_whether_its_sampling_compiled_the_network(tmp_path, monkeypatch):
    """The first score of a loaded run compiles its sampler (under --compile), the run's next scores reuse it:
    the score files say which, so that the study's rates keep the compilation apart (experiments.timings)."""
    import torch

    import ditlab.generation as generation

    class Compiled(torch.nn.Module):  # stands in for torch.compile's wrapper: another module, the same numbers
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    monkeypatch.setattr(generation, "compile_for_sampling", lambda model, device, num, when: Compiled(model))
    data, net = write_study(tmp_path, monkeypatch, EVALS, 8)
    out = tmp_path / "out"
    assert main(_args(tmp_path, data, net)) == 0
    compiled = {p.stem: json.loads(p.read_text())["sampler_compiled"] for p in (out / "scores").glob("*.json")}
    assert compiled == {"single-s0__default__e3": True, "single-s0__default__h2": False,
                        "only_e3-s0__default__e3": True}
    loads = {p.stem: json.loads(p.read_text())["load_seconds"] for p in (out / "scores").glob("*.json")}
    assert loads["single-s0__default__e3"] > 0 and loads["single-s0__default__h2"] == 0  # loaded for e3 already
    monkeypatch.setattr(generation, "compile_for_sampling", lambda model, device, num, when: model)  # not compiled
    (out / "scores" / "only_e3-s0__default__e3.json").unlink()
    assert main(_args(tmp_path, data, net)) == 0
    assert json.loads((out / "scores" / "only_e3-s0__default__e3.json").read_text())["sampler_compiled"] is False


def test_plan_estimates_the_device_time_left_from_the_timed_scores(tmp_path):
    """The rates come from the timed scores (a training's set-up counted once however many scores it has); a
    run to train costs its time limit plus the set-up, a score its samples' network passes and FID, and each run
    scored one compilation of its sampler (ditlab.experiments.timings, tests/experiments/test_timings.py). A unit
    with all its scores is done, its run here or not (a restored study); untimed scores are left out."""
    from ditlab.experiments.plan import _count, describe_plan
    from ditlab.experiments.timings import measured_rates

    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "ablation.yaml").write_text(EVALS.replace("budget: {steps: 2}", "budget: {time_limit: 100}"))
    spec = load_ablation(tmp_path / "ablation.yaml")
    check_variants(spec, [])  # fills in each variant's default path, as describe_plan does
    out = tmp_path / "out"
    (out / "scores").mkdir(parents=True)
    (out / "runs" / "single-s0").mkdir(parents=True)
    (out / "runs" / "single-s0" / "summary.json").write_text("{}")
    timed = {"variant": "single", "seed": 0, "train_wall_seconds": 130.0, "train_seconds": 100.0,
             "num_samples": 6, "nfe": 3, "cfg_scale": 1.0, "fid_seconds": 3.0}
    # 0.5 s a sample per network pass (6 samples x 3 NFE), 0.5 s a sample for FID; h2 compiled its sampler: 20 s
    for name, sample_s, compiled in (("e3", 9.0, False), ("h2", 29.0, True)):
        (out / "scores" / f"single-s0__default__{name}.json").write_text(
            json.dumps({**timed, "sample_seconds": sample_s, "sampler_compiled": compiled}))
    restored = out / "scores" / "only_e3-s0__default__e3.json"
    restored.write_text(  # no timings: an older score; its run is not here (restored), and it is its only score
        json.dumps({"variant": "only_e3", "seed": 0, "num_samples": 6, "sample_seconds": 99.0}))
    assert measured_rates(tmp_path / "nowhere") is None
    rates = measured_rates(out)
    assert rates == {"setup_s": 30.0, "setup_warm_s": None, "setup_new_timed": True, "pass_s": 0.5,
                     "compile_in_pass": False, "compile_s": 20.0, "load_s": None, "posthoc_load_s": None,
                     "fid_s": 0.5, "scores": 2, "steps_per_s": 0.0, "variant_steps_per_s": {}}
    counts = _count(spec, out, rates)
    assert counts["to_train"] == 0 and counts["trained"] == 2 and counts["scored"] == 3 and counts["left_s"] == 0
    restored.unlink()
    counts = _count(spec, out, rates)
    assert counts["to_train"] == 1 and counts["scored"] == 2
    # only_e3: train, score its one eval (6 samples x (3 passes x 0.5 + 0.5)), compile its sampler
    assert counts["left_s"] == pytest.approx(100 + 30 + 6 * 2.0 + 20)
    lines = describe_plan(spec, out)
    assert lines[-1].endswith(
        "about 3 min of device time at the rates of the 2 timed scores so far (30 s of set-up a training, 500.000 ms "
        "a sample per network pass and 500.00 ms for its FID, 20 s to compile a run's sampler), on the machine that "
        "measured them")
    # the units left, in the runner's order, each with its seconds: what --machine-left-s judges
    assert lines[-2] == "  next units, in the runner's order, at the measured rates: only_e3-s0 ~162 s"


def test_the_estimates_count_the_fid_evaluations_during_training(tmp_path):
    """A budget with FID during training (the long stage's eval_every): a run costs its evaluations too, one per
    eval_every steps at the variant's measured steps per second (the study's median for a variant not timed yet),
    eval_num samples each with the settings of the variant's first eval, and one compilation of the sampler;
    --plan and the runner's unit estimate (what --machine-left-s judges) agree."""
    from ditlab.experiments.ablation import AblationRunner
    from ditlab.experiments.plan import _count
    from ditlab.experiments.timings import measured_rates, training_eval_s

    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "ablation.yaml").write_text(EVALS.replace("budget: {steps: 2}",
                                                          "budget: {time_limit: 100, eval_every: 100, eval_num: 4}"))
    spec = load_ablation(tmp_path / "ablation.yaml")
    check_variants(spec, [])
    out = tmp_path / "out"
    (out / "scores").mkdir(parents=True)
    for name, steps in (("e3", 500), ("h2", 500)):  # 5 steps a timed second; 0.4 s a pass, 0.3 s an FID a sample
        (out / "scores" / f"single-s0__default__{name}.json").write_text(json.dumps(
            {"variant": "single", "seed": 0, "train_wall_seconds": 130.0, "train_seconds": 100.0, "train_steps": steps,
             "num_samples": 6, "nfe": 3, "sample_seconds": 7.2, "fid_seconds": 1.8, "sampler_compiled": False}))
    rates = measured_rates(out)
    assert (rates["steps_per_s"], rates["variant_steps_per_s"]) == (5.0, {"single": 5.0})
    assert rates["pass_s"] == pytest.approx(0.4) and rates["compile_s"] is None  # nothing compiled (the CPU's)
    e3 = spec.evals["e3"]  # euler, 3 steps: 3 passes a sample, 1.5 s with its FID
    # 500 steps in 100 s: 5 evaluations of 4 samples; a variant's own rate first; at most the budget's steps
    assert training_eval_s(rates, "only_e3", 100, 10**6, 100, 4, e3) == pytest.approx(5 * 4 * 1.5)
    assert training_eval_s({**rates, "variant_steps_per_s": {"fast": 10.0}}, "fast", 100, 10**6, 100, 4, e3) == \
        pytest.approx(10 * 4 * 1.5)
    assert training_eval_s(rates, "single", 100, 250, 100, 4, e3) == pytest.approx(2 * 4 * 1.5)
    assert training_eval_s(rates, "single", 100, 10**6, 0, 4, e3) == 0.0
    assert training_eval_s({**rates, "compile_s": 20.0}, "single", 100, 10**6, 100, 4, e3) == \
        pytest.approx(5 * 4 * 1.5 + 20)  # the first evaluation compiles the sampler
    expected = 100 + 30 + 5 * 4 * 1.5 + 6 * 1.5  # only_e3: train, evaluate during training, score its one eval
    assert _count(spec, out, rates)["left_s"] == pytest.approx(expected)
    runner = AblationRunner(spec, out, scorer=None, device="cpu")
    unit = next(u for u in runner.units if u.variant.name == "only_e3")
    assert runner.expected_unit_s(unit, out / "runs" / unit.name) == pytest.approx(expected)


def test_rates_from_another_folder_judge_a_folder_that_has_timed_nothing(tmp_path, capsys):
    """--rates-from DIR: a fresh folder (a headline's, a time-to-FID run's) has no timed score, so --plan had no
    estimate and --machine-left-s judged its first unit by the time limit alone (not its FID evaluations during
    training, set-up or scores). Another folder's timed scores stand in until the folder has its own."""
    from ditlab.cli import main
    from ditlab.experiments.ablation import AblationRunner
    from ditlab.experiments.plan import _count, describe_plan
    from ditlab.experiments.timings import describe_rates, load_rates_from, measured_rates

    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "ablation.yaml").write_text(EVALS.replace("budget: {steps: 2}",
                                                          "budget: {time_limit: 100, eval_every: 100, eval_num: 4}"))
    spec = load_ablation(tmp_path / "ablation.yaml")
    check_variants(spec, [])
    timed = {"variant": "single", "seed": 0, "train_wall_seconds": 130.0, "train_seconds": 100.0, "train_steps": 500,
             "num_samples": 6, "nfe": 3, "sample_seconds": 7.2, "fid_seconds": 1.8, "sampler_compiled": False}
    other = tmp_path / "other"
    (other / "scores").mkdir(parents=True)
    for name in ("e3", "h2"):  # 30 s of set-up, 5 steps a second, 0.4 s a pass and 0.3 s of FID a sample
        (other / "scores" / f"single-s0__default__{name}.json").write_text(json.dumps(timed))
    rates = load_rates_from(other)
    assert rates == {**measured_rates(other), "source": str(other)}
    out = tmp_path / "out"
    # single: e3 (Euler 3 steps) and h2 (Heun 2 steps), 3 network passes a sample each; only_e3: e3
    single = 100 + 30 + 5 * 4 * (3 * 0.4 + 0.3) + 6 * (3 * 0.4 + 0.3) * 2  # train, 5 evaluations, e3 and h2
    only_e3 = 100 + 30 + 5 * 4 * (3 * 0.4 + 0.3) + 6 * (3 * 0.4 + 0.3)
    assert _count(spec, out, rates)["left_s"] == pytest.approx(single + only_e3)
    assert describe_plan(spec, out)[-1].endswith("3 scores")  # no estimate of its own
    lines = describe_plan(spec, out, rates_from=rates)
    assert f"at the rates of the 2 timed scores under {other} (--rates-from)" in lines[-1]
    assert lines[-2] == f"  next units, in the runner's order, at the measured rates: single-s0 ~{single:.0f} s, " \
                        f"only_e3-s0 ~{only_e3:.0f} s"
    runner = AblationRunner(spec, out, scorer=None, device="cpu", rates_from=rates)
    unit = next(u for u in runner.units if u.variant.name == "single")
    assert runner.rates is rates and runner.expected_unit_s(unit, out / "runs" / unit.name) == pytest.approx(single)
    # its own timed scores, once it has some, come first
    (out / "scores").mkdir(parents=True)
    (out / "scores" / "single-s0__default__e3.json").write_text(json.dumps({**timed, "sample_seconds": 14.4}))
    assert AblationRunner(spec, out, scorer=None, device="cpu", rates_from=rates).rates == measured_rates(out)
    # ... but a set-up it timed only on a warm compile cache is no measure of a fresh machine's: --rates-from's
    (out / "scores" / "single-s0__default__e3.json").write_text(json.dumps(
        {**timed, "sample_seconds": 14.4, "train_wall_seconds": 104.0, "train_compile_cache": "warm"}))
    combined = AblationRunner(spec, out, scorer=None, device="cpu", rates_from=rates).rates
    assert (combined["setup_s"], combined["setup_warm_s"], combined["filled"]) == (30.0, 4.0, ["setup_s"])
    assert describe_plan(spec, out, rates_from=rates)[-1].endswith(
        f"at the rates of the 1 timed scores so far, with setup_s from {other} (--rates-from) "
        f"({describe_rates(combined)}), on the machine that measured them")
    assert main(["ablate", str(tmp_path / "ablation.yaml"), "--out", str(tmp_path / "fresh"), "--plan",
                 "--rates-from", str(other)]) == 0
    assert "(--rates-from)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--rates-from .*nowhere: no such folder"):
        load_rates_from(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="--rates-from .*empty: no timed score file under it"):
        load_rates_from(tmp_path / "empty")


def test_stages_run_on_parallel_workers(tmp_path, monkeypatch):
    """A staged study through --devices cpu,cpu (the --gpus N path): the same stages, folders and ranking."""
    data, net = write_study(tmp_path, monkeypatch, STAGES, 8)
    out = tmp_path / "out"
    assert main(_args(tmp_path, data, net) + ["--devices", "cpu,cpu"]) == 0
    spec = load_ablation(tmp_path / "ablation.yaml")
    check_variants(spec, [])
    ranked = ranking(stage_spec(spec, spec.stages[0], spec.variants), out / "screen", "")
    chosen = {ranked[0][0], "base"}
    assert sorted(p.name for p in (out / "final" / "runs").iterdir()) == sorted(
        f"{v}-s{s}" for v in chosen for s in (0, 1))
    assert "## screen -> final" in (out / "stages.md").read_text()
    assert len(list((out / "final" / "scores").glob("*.json"))) == 2 * len(chosen)


def test_data_facts_come_from_a_trained_run_of_the_same_data(tmp_path, monkeypatch):
    from ditlab.experiments.build_check import DataFacts

    data, net = write_study(tmp_path, monkeypatch, ROUTED, 8)
    out = tmp_path / "out"
    assert main(_args(tmp_path, data, net) + ["--only", "base", "--stage", "screen"]) == 0
    cfg = load_config_of(load_ablation(tmp_path / "ablation.yaml"), data)
    saved = json.loads((out / "screen" / "runs" / "base-s0" / "model.json").read_text())
    assert DataFacts(out)(cfg) == saved  # no data read: the run's own model.json
    # data.path may differ between machines; other data options change what the network sees
    assert DataFacts(out)(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path="elsewhere"))) == saved
    assert DataFacts(out)(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=16))) is None


def test_a_stage_trains_the_combination_first_and_carries_it_on(tmp_path, monkeypatch, capsys):
    # changes on independent keys, none holding another: whatever the stand-in ranking, the best two merge
    data, net = write_study(tmp_path, monkeypatch, STACKED.replace("  again: {steps: 1, top: 1, stack: 1}\n", "")
                            .replace("final: {steps: 2, top: 1}", "final: {steps: 2, top: 1, combine: 2}"), 8)
    out = tmp_path / "out"
    assert main(_args(tmp_path, data, net)) == 0
    runs = sorted(p.name for p in (out / "final" / "runs").iterdir())
    assert "combo_final-s0" in runs and len(runs) == 2  # the best of the screen and the combination
    log = capsys.readouterr().out
    final_log = log[log.index("stage final"):]
    trained = [line.split()[3] for line in final_log.splitlines() if line.startswith("ditlab ablate: training ")]
    assert trained[0] == "combo_final-s0" and len(trained) == 2  # the result the stage is for, first
    record = json.loads((out / "final" / "scores" / "combo_final-s0__default.json").read_text())
    assert record["note"].startswith("combination of ") and record["train_steps"] == 2
    stages_md = (out / "stages.md").read_text()
    assert "and trains combo_final: the combination of" in stages_md
    assert "| combo_final | default |" in (out / "final" / "results.md").read_text()


def test_bad_combine_is_named(tmp_path):
    refused(tmp_path, "stages: {s: {combine: 2}}\nvariants: {v: {}}\n", "stages.s.combine")
    refused(tmp_path, "stages: {s: {}, t: {combine: 1}}\nvariants: {v: {}}\n", "stages.t.combine")


def test_an_edited_file_does_not_mix_with_runs_of_the_old_one(tmp_path, monkeypatch, capsys):
    data, net = write_study(tmp_path, monkeypatch, EVALS, 8)
    assert main(_args(tmp_path, data, net)) == 0
    capsys.readouterr()
    assert main(_args(tmp_path, data, net)) == 0  # unchanged: everything is skipped
    spec = (tmp_path / "ablation.yaml").read_text().replace("optim.lr=3e-4", "optim.lr=5e-4")
    (tmp_path / "ablation.yaml").write_text(spec)
    assert main(_args(tmp_path, data, net)) == 1
    err = capsys.readouterr().err
    assert "variant only_e3" in err and "optim.lr: 0.0003 -> 0.0005" in err and "only_e3-s0__*" in err
    # another machine's paths are not a change
    moved = tmp_path / "moved.npz"
    moved.write_bytes(data.read_bytes())
    (tmp_path / "ablation.yaml").write_text(spec.replace("optim.lr=5e-4", "optim.lr=3e-4"))
    args = _args(tmp_path, data, net)
    args[args.index(f"data.path={data}")] = f"data.path={moved}"
    assert main(args) == 0


def test_a_worker_on_a_numbered_gpu_trains_on_it(tmp_path, monkeypatch):
    """--gpus N: a worker's runner has device cuda:K; its trainings must go there, not to "auto" = GPU 0
    (checked without a GPU: the config handed to the Trainer is captured)."""
    import torch

    import ditlab.train.trainer as trainer_module
    from ditlab.experiments.ablation import AblationRunner, Unit

    data, net = write_study(tmp_path, monkeypatch, EVALS, 8)
    spec = load_ablation(tmp_path / "ablation.yaml")
    runner = AblationRunner(spec, tmp_path / "out", scorer=None, overrides=[f"data.path={data}", "train.device=auto"],
                            device="cpu")
    seen = []

    class Captured:
        def __init__(self, cfg, resume=False, progress=True):
            seen.append(cfg.train.device)

        def run(self):
            return 0

    monkeypatch.setattr(trainer_module, "Trainer", Captured)
    runner.device = torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    runner.train(Unit(spec.variants[0], 0), tmp_path / "out" / "runs" / "x")
    runner.device = torch.device("cpu")
    runner.train(Unit(spec.variants[0], 0), tmp_path / "out" / "runs" / "y")
    assert seen == ["cuda:3", "auto"]


def test_plan_previews_whom_a_waiting_stage_would_take(tmp_path):
    """Before the screen ends, --plan names whom the final stage would take on the ranking so far: the best
    first with their FID, then the kept variants not ranked yet."""
    from ditlab.experiments.plan import describe_plan

    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "ablation.yaml").write_text(STAGES)
    spec = load_ablation(tmp_path / "ablation.yaml")
    out = tmp_path / "out"
    scores = out / "screen" / "scores"
    scores.mkdir(parents=True)
    assert "would take" not in describe_plan(spec, out)[1]  # nothing ranked: nothing to say
    for name, fid in (("hot", 3.0), ("cold", 7.0)):
        (scores / f"{name}-s0__default.json").write_text(
            json.dumps({"variant": name, "seed": 0, "path": "default", "fid": fid}))
    line = describe_plan(spec, out)[1]
    assert line.startswith("stage final: 2 steps per run, seeds [0, 1]: waits for the stage before it")
    assert line.endswith("; with the 2 of 3 variants ranked so far it would take hot (3.00), base")
    # once scores carry timings: one run's device seconds, for the best so far (what a session must hold)
    (scores / "hot-s0__default.json").write_text(json.dumps(
        {"variant": "hot", "seed": 0, "path": "default", "fid": 3.0, "train_wall_seconds": 20.0,
         "train_seconds": 5.0, "train_steps": 1, "num_samples": 6, "nfe": 2, "sample_seconds": 5.0,
         "fid_seconds": 1.0}))
    # 15 s of set-up, 4 samples at 1 s (euler, 2 steps: 2 passes a sample at 5/12 s, its FID 1/6 s)
    line = next(x for x in describe_plan(spec, out) if x.startswith("stage final"))
    assert line.endswith("it would take hot (3.00), base; a run of hot ~19 s at the measured rates")
    (scores / "base-s0__default.json").write_text(
        json.dumps({"variant": "base", "seed": 0, "path": "default", "fid": 1.0}))
    assert "would take" not in describe_plan(spec, out)[1]  # the screen is complete: the stage is known


STACKED = """\
config: tiny.yaml
seeds: [0]
overrides: [task.kind=image]
sample: {num: 6, seed: 3, sampler: euler, steps: 2, batch_size: 4}
stages:
  screen: {steps: 1}
  again: {steps: 1, top: 1, stack: 1}
  final: {steps: 2, top: 1}
variants:
  hot: {overrides: [optim.lr=1e-2]}
  clip: {overrides: [optim.grad_clip=0.5]}
  xavier: {overrides: [model.output_init=xavier]}
"""


def test_a_second_round_at_the_same_budget_takes_the_scores_it_has(tmp_path, monkeypatch, capsys):
    """A stacking round at the screen's budget trains only its new variant: the best's score is taken from the
    screen (marked, and not counted twice in the device-time rates); the stage after ranks all of them."""
    from ditlab.experiments.timings import measured_rates

    data, net = write_study(tmp_path, monkeypatch, STACKED, 8)
    out = tmp_path / "out"
    assert main(_args(tmp_path, data, net)) == 0
    assert "stage again takes 1 scores of the same budget from screen" in capsys.readouterr().out
    ranked = [line.split("|")[2].strip() for line in (out / "stages.md").read_text().split("## screen -> again")[1]
              .split("##")[0].splitlines() if line.startswith("| 1 |")]
    best = ranked[0]
    runs = [p.name for p in (out / "again" / "runs").iterdir()]
    assert len(runs) == 1 and runs[0].startswith(f"{best}+") and runs[0].endswith("-s0")  # only the new one
    carried = json.loads((out / "again" / "scores" / f"{best}-s0__default.json").read_text())
    assert carried["carried_from"] == "screen"
    assert carried["fid"] == json.loads((out / "screen" / "scores" / f"{best}-s0__default.json").read_text())["fid"]
    stacked_record = json.loads((out / "again" / "scores" / f"{runs[0]}__default.json").read_text())
    assert "carried_from" not in stacked_record and len(stacked_record["overrides"]) == 2  # the two merged
    assert "stacked on the best: " + runs[0][:-3] in (out / "stages.md").read_text()
    assert len(list((out / "final" / "runs").iterdir())) == 1  # the final ranks the round's three
    assert len(list(out.glob("**/scores/*.json"))) == 6
    assert measured_rates(out)["scores"] == 5  # the carried copy is the screen's measurement, counted once


def test_only_whole_units_are_carried(tmp_path):
    """A unit's scores come from one training: where the later stage owes an eval the earlier one did not score,
    or another seed, nothing of that unit is carried (the runner would train it again and drop the copies)."""
    from ditlab.experiments.stages import carried_scores

    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    text = """\
config: tiny.yaml
seeds: [0]
sample: {num: 6, seed: 3, sampler: euler, steps: 2, batch_size: 4}
evals: {a: {}, b: {steps: 3}}
stages:
  screen: {steps: 1, evals: [a]}
  again: {steps: 1, top: 1, seeds: [0, 1]}
variants:
  x: {overrides: [optim.lr=1e-2]}
"""
    (tmp_path / "ablation.yaml").write_text(text)
    spec = load_ablation(tmp_path / "ablation.yaml")
    check_variants(spec, [])
    out = tmp_path / "out"
    screen = stage_spec(spec, spec.stages[0], spec.variants)
    (out / "screen" / "scores").mkdir(parents=True)
    (out / "screen" / "scores" / "x-s0__default__a.json").write_text("{}")
    again = stage_spec(spec, spec.stages[1], spec.variants)
    assert carried_scores(screen, out / "screen", again, out / "again") == []  # b is owed too
    narrowed = stage_spec(spec, dataclasses.replace(spec.stages[1], evals=["a"]), spec.variants)
    pairs = carried_scores(screen, out / "screen", narrowed, out / "again")
    assert [(s.name, d.relative_to(out).as_posix()) for s, d in pairs] == [
        ("x-s0__default__a.json", "again/scores/x-s0__default__a.json")]  # seed 0 only: seed 1 never trained
    longer = stage_spec(spec, dataclasses.replace(spec.stages[1], evals=["a"], budget=dataclasses.replace(
        spec.stages[1].budget, steps=2)), spec.variants)
    assert carried_scores(screen, out / "screen", longer, out / "again") == []  # another budget
    pairs[0][1].parent.mkdir(parents=True)
    pairs[0][1].write_text("{}")
    assert carried_scores(screen, out / "screen", narrowed, out / "again") == []  # already there


def test_bad_best_evals_and_on_best_are_named(tmp_path):
    refused(tmp_path, "evals: {a: {}}\nstages: {s: {best_evals: [a]}}\nvariants: {v: {}}\n", "not on the first stage")
    refused(tmp_path, "evals: {a: {}}\nstages: {s: {}, t: {best_evals: [z]}}\nvariants: {v: {}}\n",
            "stages.t.best_evals: 'z' is not in evals")
    refused(tmp_path, "evals: {a: {}, b: {}}\nstages: {s: {}, t: {evals: [a], best_evals: [b]}}\nvariants: {v: {}}\n",
            "not among the stage's evals")
    refused(tmp_path, "variants: {v: {on_best: maybe}}\n", "variants.v.on_best must be true or false")


def test_the_combination_trains_first_before_variants_stacked_in_an_earlier_stage():
    from ditlab.experiments.ablation import order_variants
    from ditlab.experiments.ablation_spec import Variant

    stacked = Variant("a+b", ["x=1", "y=2"], combined_from=["a", "b"])
    combo = Variant("combo_final", ["x=1", "y=2", "z=3"], combined_from=["a+b", "c"])
    order = order_variants([Variant("base"), stacked, Variant("c", ["z=3"]), combo])
    assert [v.name for v in order] == ["combo_final", "base", "a+b", "c"]


def test_the_muon_options_ablation_repeats_the_stack_rounds_conditions():
    """configs/ablations/muon_options.yaml compares with the stack round's muon+lr2e3 score: the same overrides,
    budget, seed and sample settings; `split` differs by optim.muon_split alone, `muon_lr4e3` by optim.muon_lr,
    `split_lr4e3` by both, `split_lr6e3` and `split_lr8e3` from it by optim.muon_lr alone, and
    `split_lr6e3_adamw3e3` from `split_lr6e3` by optim.lr alone (AdamW's part; Muon's stays at 6e-3)."""
    from pathlib import Path

    from ditlab.experiments.ablation import variant_config

    plan, split = load_ablation("configs/ablations/speedrun.yaml"), load_ablation("configs/ablations/muon_options.yaml")
    check_variants(plan, [])
    check_variants(split, [])
    stack = stage_spec(plan, plan.stages[1], plan.variants)
    assert (split.budget, split.seeds, split.sample) == (stack.budget, stack.seeds, stack.sample)
    assert stack.evals_of(stack.variants[0]) == [("cfg", stack.sample)]  # the stack round scored the plain sample
    assert [v.name for v in split.variants] == ["whole", "split", "muon_lr4e3", "split_lr4e3", "split_lr6e3",
                                                "split_lr8e3", "split_lr6e3_adamw3e3"]
    whole, with_split, muon_lr, both, faster, fastest, adamw_faster = (
        variant_config(split, v, 0, Path("u"), []) for v in split.variants)
    muon = next(v for v in plan.variants if v.name == "muon")
    lr2e3 = next(v for v in plan.variants if v.name == "lr2e3")
    pair = dataclasses.replace(muon, overrides=muon.overrides + lr2e3.overrides)  # the stack round's muon+lr2e3
    paired = variant_config(stack, pair, 0, Path("u"), [])
    assert whole == paired
    assert dataclasses.replace(with_split, optim=dataclasses.replace(with_split.optim, muon_split=False)) == whole
    assert (muon_lr.optim.lr, muon_lr.optim.muon_lr) == (2e-3, 4e-3)
    assert dataclasses.replace(muon_lr, optim=dataclasses.replace(muon_lr.optim, muon_lr=None)) == whole
    assert dataclasses.replace(both, optim=dataclasses.replace(both.optim, muon_split=False)) == muon_lr
    assert faster.optim.muon_lr == 6e-3
    assert dataclasses.replace(faster, optim=dataclasses.replace(faster.optim, muon_lr=4e-3)) == both
    assert fastest.optim.muon_lr == 8e-3
    assert dataclasses.replace(fastest, optim=dataclasses.replace(fastest.optim, muon_lr=4e-3)) == both
    assert (adamw_faster.optim.lr, adamw_faster.optim.muon_lr) == (3e-3, 6e-3)
    assert dataclasses.replace(adamw_faster, optim=dataclasses.replace(adamw_faster.optim, lr=2e-3)) == faster


def _trains_the_preset_as_shipped(name: str, seed: int):
    """What configs/ablations/NAME.yaml must hold to measure the preset as shipped: one variant, `preset`, without
    overrides (its own or the file's), trained with the preset's recipe, and its guided eval `cfg` sampling with
    the preset's `sample:` section. Returns (the file, the preset, its guided eval, the run's config of ``seed``)."""
    from pathlib import Path

    from ditlab.config import load_config
    from ditlab.experiments.ablation import variant_config

    spec = load_ablation(f"configs/ablations/{name}.yaml")
    check_variants(spec, [])
    preset = load_config("configs/cifar10_speedrun.yaml", [])
    assert [v.name for v in spec.variants] == ["preset"] and not spec.variants[0].overrides and not spec.overrides
    guided = dict(spec.evals_of(spec.variants[0]))["cfg"]
    s = preset.sample
    assert (guided.sampler, guided.steps, guided.cfg_scale, tuple(guided.cfg_interval)) == (
        s.sampler, s.steps, s.cfg_scale, tuple(s.cfg_interval))
    trained = variant_config(spec, spec.variants[0], seed, Path("u"), [])
    assert (trained.model, trained.diffusion, trained.optim, trained.ema) == (
        preset.model, preset.diffusion, preset.optim, preset.ema)  # the recipe as shipped
    return spec, preset, guided, trained


def test_the_headline_ablation_runs_the_preset_with_its_own_sampler():
    """configs/ablations/speedrun_headline.yaml trains the preset as shipped (no overrides) for its own time limit
    and scores it with the preset's sample section, guided, and unguided: when the preset's recipe or sampler
    changes, the headline cannot quietly measure another."""
    headline, preset, guided, trained = _trains_the_preset_as_shipped("speedrun_headline", 0)
    assert headline.seeds == [0, 1]
    assert headline.budget.time_limit == preset.train.time_limit
    (guided_name, _), (plain_name, plain) = headline.evals_of(headline.variants[0])
    assert (guided_name, plain_name) == ("cfg", "nocfg")
    s = preset.sample
    assert (plain.sampler, plain.steps, plain.cfg_scale, plain.cfg_interval) == (s.sampler, s.steps, 1.0, None)
    assert guided.num == plain.num == 10000
    assert (trained.train.time_limit, trained.train.batch_size) == (preset.train.time_limit, preset.train.batch_size)


def test_the_guidance_ablation_chooses_on_seeds_the_headline_does_not_report():
    """configs/ablations/speedrun_guidance.yaml trains the preset as shipped like the headline, on other training
    seeds, and scores the preset's sampler at other guidance scales: a scale chosen there is not chosen on the runs
    whose FID the README quotes."""
    guidance, preset, _, _ = _trains_the_preset_as_shipped("speedrun_guidance", 2)
    headline = load_ablation("configs/ablations/speedrun_headline.yaml")
    assert not set(guidance.seeds) & set(headline.seeds) and len(guidance.seeds) == 2
    assert guidance.budget.time_limit == headline.budget.time_limit == preset.train.time_limit
    evals = dict(guidance.evals_of(guidance.variants[0]))
    s = preset.sample
    for name, e in evals.items():  # the preset's sampler, only guidance changes
        assert (e.sampler, e.steps, e.num, e.seed) == (s.sampler, s.steps, 10000, headline.sample.seed), name
    assert {e.cfg_scale for e in evals.values()} == {1.0, 1.5, 2.0, 2.5}


def test_the_muon_lr_ablation_reuses_the_headlines_runs_as_its_preset():
    """configs/ablations/speedrun_muon_lr.yaml: `preset` is the headline's run (same recipe, seeds, budget and
    sampler), so the headline's score files (twenty-sixth session, H200) stand for it; the archive's records of
    its three evals were sampled with the settings the file asks for; split_lr6e3 differs by optim.muon_split and
    optim.muon_lr alone (muon_options.yaml's winner at 120 s)."""
    import tarfile
    from pathlib import Path

    from ditlab.experiments.ablation import variant_config

    spec = load_ablation("configs/ablations/speedrun_muon_lr.yaml")
    headline = load_ablation("configs/ablations/speedrun_headline.yaml")
    check_variants(spec, [])
    assert (spec.seeds, spec.budget, spec.sample, spec.config) == (
        headline.seeds, headline.budget, headline.sample, headline.config)
    preset, muon_lr = spec.variants
    assert preset.name == "preset" and not preset.overrides and not spec.overrides and spec.baseline == "preset"
    for seed in spec.seeds:
        assert variant_config(spec, preset, seed, Path("u"), []) == variant_config(
            headline, headline.variants[0], seed, Path("u"), [])
    assert muon_lr.name == "split_lr6e3"
    mine = variant_config(spec, muon_lr, 0, Path("u"), [])
    assert (mine.optim.lr, mine.optim.muon_lr, mine.optim.muon_split) == (2e-3, 6e-3, True)
    assert dataclasses.replace(mine, optim=dataclasses.replace(mine.optim, muon_lr=None, muon_split=False)) == \
        variant_config(spec, preset, 0, Path("u"), [])
    options = load_ablation("configs/ablations/muon_options.yaml")  # the same overrides as the 120-s winner's
    assert muon_lr.overrides == next(v.overrides for v in options.variants if v.name == "split_lr6e3")
    evals = dict(spec.evals_of(preset))
    assert set(evals) == {"cfg", "cfg2", "nocfg"}
    with tarfile.open("docs/runs/twentysixth_session_h200/candidate_headline_files.tgz") as tar:
        for seed in spec.seeds:
            for name, e in evals.items():
                r = json.load(tar.extractfile(f"scores/preset-s{seed}__default__{name}.json"))
                assert (r["variant"], r["seed"], r["eval"], r["machine"]) == ("preset", seed, name, "NVIDIA H200")
                assert (r["sampler"], r["steps"], r["num_samples"], r["sample_seed"], r["cfg_scale"]) == (
                    e.sampler, e.steps, e.num, e.seed, e.cfg_scale), (seed, name)
                assert (None if r["cfg_interval"] is None else tuple(r["cfg_interval"])) == (
                    None if e.cfg_interval is None else tuple(e.cfg_interval)), (seed, name)
                assert r["overrides"] == [] and r["train_seconds"] >= 420


def test_the_time_to_fid_ablation_is_the_long_stage_on_the_preset():
    """configs/ablations/speedrun_time_to_fid.yaml measures the issue's time to quality on the preset as shipped
    with the study's long-stage settings (900 s, FID-10k every 4,000 steps with the guided eval, the same
    thresholds) and scores its end with the preset's sampler, guided and not: it can run on the issue's H200 before
    the final stage ends, and cannot quietly drift from the long stage it stands in for."""
    ttf, _, guided, trained = _trains_the_preset_as_shipped("speedrun_time_to_fid", 0)
    study = load_ablation("configs/ablations/speedrun.yaml")
    long = next(st for st in study.stages if st.name == "long")
    assert ttf.seeds == [0] and ttf.time_to_fid == study.time_to_fid == [10, 7, 5]
    b = ttf.budget
    assert (b.time_limit, b.eval_every, b.eval_num) == (long.budget.time_limit, long.budget.eval_every,
                                                        long.budget.eval_num) == (900, 4000, 10000)
    (guided_name, _), (plain_name, plain) = ttf.evals_of(ttf.variants[0])
    assert (guided_name, plain_name) == ("cfg", "nocfg") == tuple(long.evals)
    assert (plain.cfg_scale, plain.cfg_interval, guided.num, plain.num) == (1.0, None, 10000, 10000)
    assert (trained.train.time_limit, trained.train.eval_every, trained.train.eval_num) == (900, 4000, 10000)


def test_the_study_builds_on_its_pinned_base_and_the_preset_inherits_it():
    """The recipe search trains configs/speedrun_v1.yaml plus each variant's overrides, whatever the preset later
    becomes; the preset (configs/cifar10_speedrun.yaml) is that file plus the final stage's leading combination
    (combo_final's overrides, the stack round's best three: Muon, lr 2e-3, SwiGLU, long skips) on the fast path, and
    nothing else: what the headline measured on the H200 with those given as --set (twenty-sixth session)."""
    from pathlib import Path

    import yaml

    from ditlab.config import load_config
    from ditlab.configlib import diff_configs

    for name in ("speedrun", "muon_options"):
        assert Path(load_ablation(f"configs/ablations/{name}.yaml").config).name == "speedrun_v1.yaml", name
    preset = yaml.safe_load(Path("configs/cifar10_speedrun.yaml").read_text())
    assert preset["base"] == "speedrun_v1.yaml"
    combination = ["optim.name=muon", "optim.lr=2.0e-3", "model.mlp=swiglu", "model.long_skips=true"]
    study = load_ablation("configs/ablations/speedrun.yaml")
    fast_path = next(v for v in study.variants if v.name == "fast_path").overrides
    assert fast_path == ["train.fast_kernels=auto", "train.compile_mode=reduce-overhead"]
    assert not diff_configs(load_config("configs/cifar10_speedrun.yaml", []),
                            load_config("configs/speedrun_v1.yaml", combination + fast_path))


def test_plan_prices_a_stage_as_the_runner_does(tmp_path):
    """A stage's units are judged by that stage's own timed scores, and by the whole study's while it has none
    (timings.folder_rates): the runner's rule for --machine-left-s. --plan priced every stage at the whole
    study's median, so a final stage with long evaluations was planned at the screening's rates."""
    from ditlab.experiments.ablation import AblationRunner
    from ditlab.experiments.build_check import DataFacts
    from ditlab.experiments.plan import describe_plan
    from ditlab.experiments.timings import folder_rates, measured_rates

    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "ablation.yaml").write_text(STAGES.replace("screen: {steps: 1}", "screen: {time_limit: 100}")
                                            .replace("final: {steps: 2,", "final: {time_limit: 200,"))
    spec = load_ablation(tmp_path / "ablation.yaml")
    check_variants(spec, [])  # each variant's default path, as describe_plan fills it in
    out = tmp_path / "out"
    timed = {"seed": 0, "path": "default", "train_wall_seconds": 130.0, "train_seconds": 100.0, "num_samples": 6,
             "nfe": 2, "sample_seconds": 6.0, "fid_seconds": 3.0, "sampler_compiled": False}
    (out / "screen" / "scores").mkdir(parents=True)
    for name, fid in (("base", 5.0), ("hot", 3.0), ("cold", 7.0)):  # 30 s of set-up, 0.5 s a pass and a FID
        (out / "screen" / "scores" / f"{name}-s0__default.json").write_text(
            json.dumps({**timed, "variant": name, "fid": fid}))
    # no stages.md: the runner is told the study's folder (cmd_ablate) and does not look for that file beside its own

    def runner_and_plan():
        screen = stage_spec(spec, spec.stages[0], spec.variants)
        ranked = ranking(screen, out / "screen", spec.stages[1].rank_by)
        final = stage_spec(spec, spec.stages[1], promoted(spec, spec.stages[1], ranked, screen.variants,
                                                          DataFacts(out)))
        runner = AblationRunner(final, out / "final", scorer=None, device="cpu", study=out)
        expected = {u.name: runner.expected_unit_s(u, out / "final" / "runs" / u.name) for u in runner.units}
        line = next(x for x in describe_plan(spec, out) if x.startswith("  next units"))
        return runner.rates, expected, line

    rates, expected, line = runner_and_plan()  # the final stage has timed nothing: the study's rates
    assert rates == folder_rates(out / "final", None, out) == measured_rates(out)
    assert line.endswith(", ".join(f"{name} ~{s:.0f} s" for name, s in expected.items() if s))
    # its own first score: 90 s of set-up, 2 s a pass; the study's median over four scores would say otherwise
    (out / "final" / "scores").mkdir(parents=True)
    (out / "final" / "scores" / "hot-s0__default.json").write_text(json.dumps(
        {**timed, "variant": "hot", "fid": 3.0, "train_wall_seconds": 290.0, "train_seconds": 200.0,
         "num_samples": 4, "sample_seconds": 16.0, "fid_seconds": 2.0}))
    rates, expected, line = runner_and_plan()
    assert rates == measured_rates(out / "final") != measured_rates(out)
    assert (rates["setup_s"], rates["pass_s"]) == (90.0, 2.0)
    assert "hot-s0" not in line and line.endswith(", ".join(f"{name} ~{s:.0f} s" for name, s in expected.items()
                                                           if name != "hot-s0"))


def test_a_stages_runner_is_given_the_studys_folder(tmp_path, monkeypatch):
    """cmd_ablate hands each stage's runner the study's folder (whose rates price a stage that has timed nothing
    yet, as --plan prices it). A file without stages has none, even with --out inside a study's folder: the runner
    used to guess the study from a stages.md beside its folder, and so priced such a folder at that study's rates."""
    from ditlab.experiments import ablation

    data, net = write_study(tmp_path, monkeypatch, STAGES, 8)
    seen = []

    class Recording(ablation.AblationRunner):
        def run(self) -> int:
            seen.append((self.out, self.study))
            return ablation.EXIT_MORE_TO_DO  # trains nothing: the stage is left for a later command

    monkeypatch.setattr(ablation, "AblationRunner", Recording)
    out = tmp_path / "out"
    assert main(_args(tmp_path, data, net) + ["--stage", "screen"]) == ablation.EXIT_MORE_TO_DO
    assert seen == [(out / "screen", out)] and (out / "stages.md").exists()
    (tmp_path / "plain.yaml").write_text(EVALS)
    args = _args(tmp_path, data, net)
    args[1], args[3] = str(tmp_path / "plain.yaml"), str(out / "extra")  # a plain study inside the staged one
    assert main(args) == ablation.EXIT_MORE_TO_DO
    assert seen[1] == (out / "extra", None)

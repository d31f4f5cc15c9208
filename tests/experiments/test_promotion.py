"""ditlab.experiments.promotion: whom a later stage takes. The combination of the best (what clashes, what does not
load or build together), the best stacked with each runner-up, kept changes on the best and its widened evals."""
import dataclasses

from ditlab.experiments.ablation import check_variants
from ditlab.experiments.ablation_spec import load_ablation
from ditlab.experiments.promotion import combination, promoted, stacked
from tests.experiments.test_ablation import write_study


def ranked(*names):
    """A ranking in the given order (FIDs 0, 1, 2, ...), one seed each."""
    return [(n, float(i), 1) for i, n in enumerate(names)]


COMBINE = """\
config: tiny.yaml
seeds: [0]
sample: {num: 6, seed: 3, sampler: euler, steps: 2, batch_size: 4}
stages:
  screen: {steps: 1}
  final: {steps: 2, top: 1, combine: 2}
variants:
  base: {overrides: [task.kind=image]}
  hot: {overrides: [task.kind=image, optim.lr=1e-2]}
  warm: {overrides: [task.kind=image, optim.lr=3e-3]}
  clip: {overrides: [task.kind=image, optim.grad_clip=0.5]}
  fused: {overrides: [task.kind=image, train.fast_kernels=on]}
  rms: {overrides: [task.kind=image, model.norm=rmsnorm]}
"""


def test_combination_merges_the_best_compatible_variants_that_beat_the_kept_ones(tmp_path, monkeypatch):
    write_study(tmp_path, monkeypatch, COMBINE, 8)
    spec = load_ablation(tmp_path / "ablation.yaml")
    final = dataclasses.replace(spec.stages[1], keep=["base"], combine=3)

    # warm sets optim.lr as hot did (left out); fused and rms cannot load together (left out); base bars
    combo = combination(spec, final, ranked("hot", "warm", "fused", "rms", "clip", "base"), spec.variants)
    assert combo.name == "combo_final" and combo.note.startswith("combination of hot + fused + clip; left out: "
                                                                 "warm (sets optim.lr otherwise); rms (")
    assert combo.overrides == ["task.kind=image", "optim.lr=1e-2", "train.fast_kernels=on", "optim.grad_clip=0.5"]
    # only variants ranked above every kept one count: one is not a combination
    assert combination(spec, final, ranked("hot", "base", "clip", "rms"), spec.variants) is None
    assert combination(spec, dataclasses.replace(final, combine=2),
                       ranked("rms", "clip", "hot", "base"), spec.variants).overrides == [
        "task.kind=image", "model.norm=rmsnorm", "optim.grad_clip=0.5"]


ROUTED = """\
config: tiny.yaml
seeds: [0]
sample: {num: 6, seed: 3, sampler: euler, steps: 2, batch_size: 4}
stages:
  screen: {steps: 1}
  final: {steps: 2, top: 1, combine: 2, keep: [base]}
variants:
  base: {overrides: [task.kind=image]}
  routed: {overrides: [task.kind=image, model.route_fraction=0.5, "model.route_blocks=0:1"]}
  skips: {overrides: [task.kind=image, model.long_skips=true]}
  clip: {overrides: [task.kind=image, optim.grad_clip=0.5]}
"""


def test_a_combination_whose_network_cannot_be_built_leaves_the_variant_out(tmp_path, monkeypatch):
    """Token routing refuses long skips in the DiT's constructor, after every config check has passed: without
    the build check the combination would fail at the start of its training, and again on every rerun."""
    from ditlab.experiments.build_check import DataFacts

    data, _ = write_study(tmp_path, monkeypatch, ROUTED, 8)
    spec = load_ablation(tmp_path / "ablation.yaml")
    final = spec.stages[1]
    order = [("routed", 1.0, 1), ("skips", 2.0, 1), ("clip", 3.0, 1), ("base", 4.0, 1)]
    # without the data facts only the config checks run: the combination that cannot train
    blind = combination(spec, final, order, spec.variants)
    assert "model.long_skips=true" in blind.overrides
    # the facts from the training data (a fresh machine, no trained run)
    facts = DataFacts(tmp_path / "out", load_data=True)
    combo = combination(spec, final, order, spec.variants, facts, [f"data.path={data}"])
    assert combo.overrides == ["task.kind=image", "model.route_fraction=0.5", "model.route_blocks=0:1",
                               "optim.grad_clip=0.5"]
    assert combo.note.startswith("combination of routed + clip; left out: skips (model.route_fraction with "
                                 "model.long_skips")
    # --plan reads no data: without a trained run it knows no facts, and says nothing it cannot check
    assert DataFacts(tmp_path / "out")(load_config_of(spec, data)) is None


def test_an_architecture_name_clashes_with_explicit_sizes(tmp_path, monkeypatch):
    """b2 (model.arch) after deep_narrow (its own width, depth and heads) would train deep_narrow under B/2's
    name: left out, either way round; the same architecture twice is no clash."""

    write_study(tmp_path, monkeypatch, ROUTED.replace(
        "  clip:", "  narrow: {overrides: [task.kind=image, model.hidden_size=16, model.num_heads=1]}\n"
                   "  wide: {overrides: [task.kind=image, model.arch=DiT-B/2]}\n"
                   "  wide2: {overrides: [task.kind=image, model.arch=DiT-B/2, optim.lr=3e-4]}\n  clip:"), 8)
    spec = load_ablation(tmp_path / "ablation.yaml")
    final = spec.stages[1]

    def merged(*names):
        combo = combination(spec, final, [(n, float(i), 1) for i, n in enumerate(names + ("base",))], spec.variants)
        return combo.note

    assert merged("narrow", "wide", "clip") == ("combination of narrow + clip; left out: wide (sets "
                                                "model.hidden_size otherwise)")
    assert merged("wide", "narrow", "clip").startswith("combination of wide + clip; left out: narrow (sets "
                                                       "model.hidden_size otherwise)")
    assert merged("wide2", "wide") == "combination of wide2 + wide"  # (wide below wide2 would be a lost change)


def load_config_of(spec, data):
    from pathlib import Path

    from ditlab.experiments.ablation import variant_config

    return variant_config(spec, spec.variants[0], 0, Path("unused"), [f"data.path={data}"])


def test_stacking_puts_each_runner_up_on_the_best_alone(tmp_path, monkeypatch):
    """``stack: K``: BEST+X for the next K variants that beat the kept ones and merge with the best; a runner-up
    that sets the best's key otherwise, or that the best already holds, is named as not stacked."""

    write_study(tmp_path, monkeypatch, COMBINE + "  hot_rms: {overrides: [task.kind=image, optim.lr=1e-2, "
                "model.norm=rmsnorm]}\n", 8)
    spec = load_ablation(tmp_path / "ablation.yaml")
    again = dataclasses.replace(spec.stages[1], keep=["base"], stack=2, top=1, combine=0)

    made, why = stacked(spec, again, ranked("hot", "warm", "clip", "rms", "fused", "base"), spec.variants)
    assert [v.name for v in made] == ["hot+clip", "hot+rms"]  # the next two that merge; fused comes too late
    assert made[0].overrides == ["task.kind=image", "optim.lr=1e-2", "optim.grad_clip=0.5"]
    assert made[0].combined_from == ["hot", "clip"] and made[0].note == "hot with clip"
    assert why == ["warm (sets optim.lr otherwise)"]
    made, why = stacked(spec, again, ranked("hot", "hot_rms", "clip", "base"), spec.variants)
    assert [v.name for v in made] == ["hot+clip"] and why == ["hot_rms (with hot it is hot_rms again)"]
    assert stacked(spec, again, ranked("hot", "base", "clip"), spec.variants) == ([], [])  # clip loses to base
    assert stacked(spec, again, ranked("base", "hot", "clip"), spec.variants) == ([], [])  # the best is kept
    chosen = promoted(spec, again, ranked("hot", "warm", "clip", "rms", "base"), spec.variants)
    assert [v.name for v in chosen] == ["base", "hot", "hot+clip", "hot+rms"]


ON_BEST = """\
config: tiny.yaml
seeds: [0]
sample: {num: 6, seed: 3, sampler: euler, steps: 2, batch_size: 4}
evals: {a: {}, b: {steps: 3}, c: {steps: 4}}
stages:
  screen: {steps: 1, evals: [a], skip: [snap]}
  final: {steps: 2, top: 2, keep: [base, snap], best_evals: [c]}
  long: {steps: 3, top: 1}
variants:
  base: {evals: [a, b]}
  hot: {overrides: [optim.lr=1e-2], evals: [a, b]}
  clip: {overrides: [optim.grad_clip=0.5], evals: [a, b]}
  snap: {overrides: [optim.grad_clip=0.9], evals: [a, c], on_best: true}
"""


def test_kept_changes_ride_on_the_best_and_best_evals_widen_it_for_one_stage(tmp_path):
    """``on_best``: a kept variant trains as BEST+NAME (its overrides merged onto the best's) with its own evals,
    or as itself where the best is the file's base or the two clash; ``best_evals`` scores the best on more evals
    in that stage only."""
    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "ablation.yaml").write_text(ON_BEST)
    spec = load_ablation(tmp_path / "ablation.yaml")
    check_variants(spec, [])
    final = spec.stages[1]

    chosen = {v.name: v for v in promoted(spec, final, ranked("hot", "clip", "base"))}
    assert set(chosen) == {"hot", "clip", "base", "hot+snap"}
    on_best = chosen["hot+snap"]
    assert on_best.overrides == ["optim.lr=1e-2", "optim.grad_clip=0.9"] and on_best.evals == ["a", "c"]
    assert on_best.note == "snap on hot" and not on_best.combined_from
    assert chosen["hot"].evals == ["a", "b", "c"] and chosen["hot"].base_evals == ["a", "b"]
    assert chosen["clip"].evals == ["a", "b"]
    assert on_best.on_best_of == "hot"
    # the next stage takes the best with its own evals again, and never the measurement on it, whatever its rank
    long = promoted(spec, spec.stages[2], ranked("hot+snap", "hot", "clip"), list(chosen.values()))
    assert [(v.name, v.evals) for v in long] == [("hot", ["a", "b"])]
    # a best that sets the kept change's key otherwise, or that is the file's base: the kept variant as it is
    why: list[str] = []
    chosen = {v.name for v in promoted(spec, final, ranked("clip", "hot", "base"), left_out=why)}
    assert chosen == {"clip", "hot", "base", "snap"}
    assert why == ["snap not on clip: snap (sets optim.grad_clip otherwise)"]
    assert {v.name for v in promoted(spec, final, ranked("base", "hot", "clip"))} == {"base", "hot", "snap"}


def test_a_change_that_lost_on_top_of_the_best_is_not_merged_back(tmp_path, monkeypatch):
    """After a stacking round, BEST+X ranked below BEST says X did not help on top of BEST: the combination of the
    top ones leaves it out (it would otherwise bring X back in through the merge)."""
    from ditlab.experiments.ablation_spec import Variant

    write_study(tmp_path, monkeypatch, COMBINE, 8)
    spec = load_ablation(tmp_path / "ablation.yaml")
    final = dataclasses.replace(spec.stages[1], keep=["base"], combine=3)
    hot_clip = Variant("hot+clip", ["task.kind=image", "optim.lr=1e-2", "optim.grad_clip=0.5"],
                       combined_from=["hot", "clip"])
    hot_rms = Variant("hot+rms", ["task.kind=image", "optim.lr=1e-2", "model.norm=rmsnorm"],
                      combined_from=["hot", "rms"])
    candidates = spec.variants + [hot_clip, hot_rms]
    combo = combination(spec, final, ranked("hot+rms", "hot", "hot+clip", "base"), candidates)
    assert combo.overrides == ["task.kind=image", "optim.lr=1e-2", "model.norm=rmsnorm"]
    assert combo.note == "combination of hot+rms + hot; left out: hot+clip (ranked below hot, which it extends)"
    # where the stack helped, it is merged
    combo = combination(spec, final, ranked("hot+rms", "hot+clip", "hot", "base"), candidates)
    assert combo.overrides == ["task.kind=image", "optim.lr=1e-2", "model.norm=rmsnorm", "optim.grad_clip=0.5"]


def test_stages_md_names_the_best_promoted_found_even_below_a_measurement(tmp_path):
    """OUT/stages.md's sentence for a stage names the variants it made (kept on the best, stacked) and the best
    whose evals it widened: the best promoted() found, not a measurement on it that happened to rank first."""
    from ditlab.experiments.stages import _ranking_lines

    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "ablation.yaml").write_text(ON_BEST)
    spec = load_ablation(tmp_path / "ablation.yaml")
    check_variants(spec, [])
    final, long = spec.stages[1], spec.stages[2]
    chosen = promoted(spec, final, ranked("hot", "clip", "base"))
    text = _ranking_lines(spec.stages[0], final, ranked("hot", "clip", "base"), chosen, [])[2]
    assert "kept on the best: hot+snap" in text and "the best, hot, is also scored on c" in text
    # the next stage: the measurement ranked first is not the best, and nothing there is made by that stage
    widened = dataclasses.replace(long, best_evals=["c"])
    again = promoted(spec, widened, ranked("hot+snap", "clip", "hot"), chosen)
    text = _ranking_lines(final, widened, ranked("hot+snap", "clip", "hot"), again, [])[2]
    assert "the best, clip, is also scored on c" in text and "kept on the best" not in text


def test_leave_one_out_trains_the_combination_without_each_of_its_variants(tmp_path, monkeypatch):
    """leave_one_out: combo_STAGE_without_NAME for each merged variant, the others merged as the combination merged
    them; a combination of two leaves the other variant itself (taken once). stages.md names them."""
    from ditlab.experiments.stages import _ranking_lines

    write_study(tmp_path, monkeypatch, COMBINE, 8)
    spec = load_ablation(tmp_path / "ablation.yaml")
    check_variants(spec, [])
    final = dataclasses.replace(spec.stages[1], keep=["base"], combine=3, leave_one_out=True)
    order = ranked("hot", "clip", "rms", "base")
    chosen = promoted(spec, final, order)
    by_name = {v.name: v for v in chosen}
    assert sorted(by_name) == ["base", "combo_final", "combo_final_without_clip", "combo_final_without_hot",
                               "combo_final_without_rms", "hot"]
    assert by_name["combo_final"].overrides == ["task.kind=image", "optim.lr=1e-2", "optim.grad_clip=0.5",
                                                "model.norm=rmsnorm"]
    assert by_name["combo_final_without_hot"].overrides == ["task.kind=image", "optim.grad_clip=0.5",
                                                            "model.norm=rmsnorm"]
    assert by_name["combo_final_without_clip"].overrides == ["task.kind=image", "optim.lr=1e-2", "model.norm=rmsnorm"]
    assert by_name["combo_final_without_rms"].note == "combo_final without rms"
    assert by_name["combo_final_without_rms"].combined_from == ["hot", "clip"]
    assert {n: v.left_out_of for n, v in by_name.items() if v.left_out_of} == {  # what results.md pairs
        "combo_final_without_hot": ("combo_final", "hot"), "combo_final_without_clip": ("combo_final", "clip"),
        "combo_final_without_rms": ("combo_final", "rms")}
    text = _ranking_lines(spec.stages[0], final, order, chosen, [])[2]
    assert ("the combination without each of its variants: combo_final_without_hot, combo_final_without_clip, "
            "combo_final_without_rms") in text and "stacked" not in text
    # two merged: each left out leaves the other one, a variant of the ranking (hot is the top one already)
    two = promoted(spec, dataclasses.replace(final, combine=2), order)
    assert sorted(v.name for v in two) == ["base", "clip", "combo_final", "hot"]
    # ... and is that leave-one-out too, taken once: the combination without clip is hot, without hot is clip
    assert {v.name: v.left_out_of for v in two} == {"base": None, "combo_final": None,
                                                    "hot": ("combo_final", "clip"), "clip": ("combo_final", "hot")}
    # without the key nothing more is trained
    assert "combo_final_without_hot" not in {v.name for v in promoted(spec, spec.stages[1], order)}


def test_plan_counts_the_leave_one_out_variants_a_waiting_stage_may_take(tmp_path, monkeypatch):
    from ditlab.experiments.plan import _most

    write_study(tmp_path, monkeypatch, COMBINE, 8)
    spec = load_ablation(tmp_path / "ablation.yaml")
    final = dataclasses.replace(spec.stages[1], keep=["base"], combine=3)
    assert _most(final, spec) == 1 + 1 + 1  # the top one, the kept one, the combination
    assert _most(dataclasses.replace(final, leave_one_out=True), spec) == 1 + 1 + 1 + 3  # and three without one

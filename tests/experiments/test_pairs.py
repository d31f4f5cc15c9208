"""Paired comparisons of an ablation's scores (ditlab.experiments.pairs) and their tables in results.md: each
change left out of a combination, each variant against the baseline, each eval against its reference eval."""
import statistics

import pytest

from ditlab.experiments.ablation_spec import load_ablation
from ditlab.experiments.results import write_markdown
from tests.experiments.test_results import _record

def _leave_one_out_file(tmp_path):
    """A file with combo_final and two variants without one of its changes, as a stage's leave_one_out makes them
    (Variant.left_out_of set), the same file as written (no left_out_of), and five scores: the combination and
    `without_lr` on seeds 0 and 1, `without_swiglu` on seed 0 only."""
    import dataclasses

    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "a.yaml").write_text("config: tiny.yaml\nseeds: [0, 1]\nvariants: {combo_final: {}, "
                                     "combo_final_without_lr: {}, combo_final_without_swiglu: {}}\n")
    named_only = load_ablation(tmp_path / "a.yaml")
    spec = dataclasses.replace(named_only, variants=[
        dataclasses.replace(v, left_out_of=("combo_final", v.name.split("_without_")[1]) if "_without_" in v.name
                            else None) for v in named_only.variants])

    def rec(variant, seed, fid):
        return {**_record(seed, fid, 300), "variant": variant}

    records = [rec("combo_final", 0, 7.0), rec("combo_final", 1, 7.4), rec("combo_final_without_lr", 0, 9.0),
               rec("combo_final_without_lr", 1, 9.8), rec("combo_final_without_swiglu", 0, 6.9)]
    return spec, named_only, records

def test_leave_one_out_says_what_each_change_adds_paired_by_seed(tmp_path):
    """combo_final_without_X against combo_final on the same path / eval and seeds: without - with, per seed; a
    seed only one of them has is left out of the pairing; no such variants, no table. The pairs come from
    Variant.left_out_of (what promotion.leave_one_out made), not from the names: a file's own variant named
    A_without_B is no leave-one-out."""
    spec, named_only, records = _leave_one_out_file(tmp_path)
    text = write_markdown(tmp_path / "results.md", spec, records, {}).read_text()
    # 2 SE: the seed sd pooled over combo_final and without_lr (variances 0.08 and 0.32, 1 df each: sd 0.447),
    # times sqrt(2 / n) for n paired seeds, times two
    assert "| lr | default | 7.20 | 9.40 | +2.20 (+2.00, +2.40) | 0.89 (2 df) | 1.92 | 2 |" in text
    assert "| swiglu | default | 7.00 | 6.90 | -0.10 | 1.26 (2 df) | 2.72 | 1 |" in text  # seed 1 of it not scored yet
    no_pairs_of_seeds = [r for r in records if r["seed"] == 0]
    assert "| lr | default | 7.00 | 9.00 | +2.00 | — | — | 1 |" in write_markdown(
        tmp_path / "results.md", spec, no_pairs_of_seeds, {}).read_text()
    plain = write_markdown(tmp_path / "results.md", spec, records[:2], {}).read_text()
    assert "leave one out" not in plain
    assert "leave one out" not in write_markdown(tmp_path / "results.md", named_only, records, {}).read_text()

def test_the_seed_noise_is_pooled_over_the_variants_with_several_seeds_on_each_path():
    """Each variant's FID variance over its seeds, weighted by its seeds less one, per (path, eval); a variant with
    one seed adds nothing, another eval is pooled apart."""

    from ditlab.experiments.pairs import pooled_seed_sd

    def rec(variant, seed, fid, ev=""):
        return {**_record(seed, fid, 300), "variant": variant, "eval": ev}

    records = [rec("a", 0, 1.0), rec("a", 1, 2.0), rec("a", 2, 3.0), rec("b", 0, 0.0), rec("b", 1, 2.0),
               rec("c", 0, 50.0), rec("a", 0, 5.0, "nocfg"), rec("a", 1, 6.0, "nocfg")]
    noise = pooled_seed_sd(records)
    assert noise["default"] == (pytest.approx((4 / 3) ** 0.5), 3)  # (1 * 2 + 2 * 1) / 3
    assert noise["default / nocfg"] == (pytest.approx(0.5 ** 0.5), 1)
    assert pooled_seed_sd(records[5:6]) == {}

def _baseline_file(tmp_path, baseline: str = "base"):
    """A file with a baseline (one path) and two variants: `lift` scored on two paths, `lr` on the default path;
    base and lr on seeds 0 and 1, lift on seed 0 only."""
    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "a.yaml").write_text(f"config: tiny.yaml\nseeds: [0, 1]\nbaseline: {baseline}\n"
                                     "variants: {base: {}, lift: {}, lr: {}}\n")
    spec = load_ablation(tmp_path / "a.yaml")

    def rec(variant, seed, fid, path="default"):
        return {**_record(seed, fid, 300), "variant": variant, "path": path}

    records = [rec("base", 0, 10.0), rec("base", 1, 11.0), rec("lr", 0, 8.0), rec("lr", 1, 8.4),
               rec("lift", 0, 9.0, "diagonal"), rec("lift", 0, 10.5, "dp-hi")]
    return spec, records

def test_each_variant_is_measured_against_the_baseline_paired_by_seed(tmp_path):
    """`baseline:` names a variant: results.md gets its FID minus each other variant's, paired by training seed,
    with 2 SE from the pooled seed noise; a baseline with one path is the reference of every path of a variant
    (single scale beside LIFT's paths); without the key, or without the baseline's scores, no table."""
    import dataclasses


    from ditlab.experiments.pairs import baseline_pairs

    spec, records = _baseline_file(tmp_path)
    pairs = baseline_pairs(spec, records)
    assert [(p.left_out, p.label, p.seeds) for p in pairs] == [
        ("lr", "default", (0, 1)), ("lift", "diagonal", (0,)), ("lift", "dp-hi", (0,))]
    assert pairs[0].diffs == pytest.approx((2.0, 2.6)) and pairs[2].diffs == pytest.approx((-0.5,))
    text = write_markdown(tmp_path / "results.md", spec, records, {}).read_text()
    assert "Against the baseline (base)" in text
    # 2 SE: the seed sd pooled over base and lr (variances 0.5 and 0.08, 1 df each: sd 0.539) * sqrt(2 / n) * 2
    assert "| lr | default | 8.20 | 10.50 | +2.30 (+2.00, +2.60) | 1.08 (2 df) | 2.32 | 2 |" in text
    assert "| lift | diagonal | 9.00 | 10.00 | +1.00 | — | — | 1 |" in text  # no variant with two seeds there
    assert "| lift | dp-hi | 10.50 | 10.00 | -0.50 | — | — | 1 |" in text
    assert "Against the baseline" not in write_markdown(
        tmp_path / "results.md", dataclasses.replace(spec, baseline=""), records, {}).read_text()
    assert baseline_pairs(spec, [r for r in records if r["variant"] != "base"]) == []

def test_a_variant_can_stay_out_of_the_baseline_table_and_its_noise(tmp_path):
    """`against_baseline: false` (LIFT's 16x16 baseline_lo, whose FID does not compare): no pair for it, and its
    seeds do not widen the noise the others are judged by; the table says who is left out. An error without
    `baseline:` or on the baseline itself."""

    from ditlab.configlib import ConfigError
    from ditlab.experiments.pairs import baseline_pairs

    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    text = ("config: tiny.yaml\nseeds: [0, 1]\nbaseline: base\n"
            "variants: {base: {}, lr: {}, lo: {against_baseline: false, note: 16x16}}\n")
    (tmp_path / "a.yaml").write_text(text)
    spec = load_ablation(tmp_path / "a.yaml")

    def rec(variant, seed, fid):
        return {**_record(seed, fid, 300), "variant": variant}

    records = [rec("base", 0, 10.0), rec("base", 1, 11.0), rec("lr", 0, 8.0), rec("lr", 1, 8.4),
               rec("lo", 0, 40.0), rec("lo", 1, 60.0)]
    pairs = baseline_pairs(spec, records)
    assert [p.left_out for p in pairs] == ["lr"]
    assert pairs[0].seed_sd == pytest.approx(0.5385, abs=1e-4) and pairs[0].seed_df == 2  # base and lr alone
    table = write_markdown(tmp_path / "results.md", spec, records, {}).read_text()
    assert "Left out (`against_baseline: false`): lo." in table and "| lo | default | 50.00 | 10.50 |" not in table
    for bad, match in ((text.replace("baseline: base\n", ""), "variants.lo.against_baseline applies only with"),
                       (text.replace("base: {}", "base: {against_baseline: false}"), "lo|base.*is the baseline"),
                       (text.replace("false, note", "sometimes, note"), "against_baseline must be true or false")):
        (tmp_path / "a.yaml").write_text(bad)
        with pytest.raises(ConfigError, match=match):
            load_ablation(tmp_path / "a.yaml")

def test_a_baseline_that_is_no_variant_is_named(tmp_path):

    from ditlab.configlib import ConfigError

    with pytest.raises(ConfigError, match="baseline: 'bsae' is not a variant of .*a.yaml \\(variants: base, lift, lr\\)"):
        _baseline_file(tmp_path, baseline="bsae")

def _eval_pairs_file(tmp_path, pairs: str = "{cfg2: cfg, cfg2_all: cfg2}"):
    """A file with four evals and `eval_pairs:`; variant v scored on all four on seeds 0 and 1 (cfg2 also on seed
    2, whose reference is missing), variant w on cfg only."""
    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "a.yaml").write_text(
        "config: tiny.yaml\nseeds: [0, 1]\nevals: {cfg: {cfg_scale: 2.5}, cfg2: {cfg_scale: 2.0}, "
        "cfg2_all: {cfg_scale: 2.0, cfg_interval: null}, nocfg: {cfg_scale: 1.0}}\n"
        f"eval_pairs: {pairs}\nvariants: {{v: {{}}, w: {{evals: [cfg]}}}}\n")
    spec = load_ablation(tmp_path / "a.yaml")

    def rec(variant, seed, eval_name, fid):
        return {**_record(seed, fid, 300), "variant": variant, "eval": eval_name}

    records = [rec("v", 0, "cfg", 7.0), rec("v", 1, "cfg", 6.8), rec("v", 0, "cfg2", 6.4), rec("v", 1, "cfg2", 6.3),
               rec("v", 2, "cfg2", 6.0), rec("v", 0, "cfg2_all", 7.5), rec("v", 1, "cfg2_all", 7.3),
               rec("v", 0, "nocfg", 9.0), rec("v", 1, "nocfg", 9.4), rec("w", 0, "cfg", 8.0), rec("w", 1, "cfg", 8.6)]
    return spec, records

def test_an_eval_is_measured_against_its_reference_eval_paired_by_seed(tmp_path):
    """`eval_pairs: {EVAL: REFERENCE}`: results.md gets the reference's FID minus the eval's on the same trainings,
    on the seeds both have, with 2 SE from the spread of the paired differences themselves (pooled per eval pair):
    sd / sqrt(n), not the seed-to-seed sd * sqrt(2 / n) of two separate trainings. Evals outside the mapping and
    variants without the eval have no row."""
    import dataclasses


    from ditlab.experiments.pairs import eval_pairs

    spec, records = _eval_pairs_file(tmp_path)
    pairs = eval_pairs(spec, records)
    assert [(p.left_out, p.label, p.seeds) for p in pairs] == [
        ("v", "default / cfg2 vs cfg", (0, 1)), ("v", "default / cfg2_all vs cfg2", (0, 1))]
    assert pairs[0].diffs == pytest.approx((0.6, 0.5)) and pairs[1].diffs == pytest.approx((-1.1, -1.0))
    # each pair's differences have variance 0.005 (1 df): sd 0.0707, 2 SE = 2 * 0.0707 / sqrt(2) = 0.10
    assert pairs[0].seed_sd == pytest.approx(0.005 ** 0.5) and pairs[0].seed_df == 1
    assert pairs[0].two_se == pytest.approx(0.1)
    # its 95% interval: the standard error 0.05 times Student's t at 0.975 on 1 df (12.71), not 2 SE
    assert pairs[0].ci95 == pytest.approx(0.05 * 12.7062)
    text = write_markdown(tmp_path / "results.md", spec, records, {}).read_text()
    assert "Against the reference evals (`eval_pairs`)" in text
    assert "| v | default / cfg2 vs cfg | 6.35 | 6.90 | +0.55 (+0.60, +0.50) | 0.10 (1 df) | 0.64 | 2 |" in text
    assert "| v | default / cfg2_all vs cfg2 | 7.40 | 6.35 | -1.05 (-1.10, -1.00) | 0.10 (1 df) | 0.64 | 2 |" in text
    one_seed = [r for r in records if r["seed"] == 0]
    assert "| v | default / cfg2 vs cfg | 6.40 | 7.00 | +0.60 | — | — | 1 |" in write_markdown(
        tmp_path / "results.md", spec, one_seed, {}).read_text()
    assert "Against the reference evals" not in write_markdown(
        tmp_path / "results.md", dataclasses.replace(spec, eval_pairs={}), records, {}).read_text()
    assert eval_pairs(spec, [r for r in records if r["eval"] != "cfg"])[0].label == "default / cfg2_all vs cfg2"

def test_an_eval_pairs_noise_is_pooled_over_the_variants_with_that_pair_only(tmp_path):
    """A CFG scale's paired difference and another eval's have spreads of their own: a noisy `cfg2_all vs cfg2`
    leaves the 2 SE of `cfg2 vs cfg` alone, and a second variant with `cfg2 vs cfg` on two seeds adds its degree of
    freedom to that label's pool."""
    from ditlab.experiments.pairs import eval_pairs

    spec, records = _eval_pairs_file(tmp_path)
    noisy = [{**r, "fid": 9.3} if (r["variant"], r["seed"], r["eval"]) == ("v", 1, "cfg2_all") else r
             for r in records]
    w_cfg2 = [{**r, "eval": "cfg2", "fid": f} for r, f in zip([r for r in records if r["variant"] == "w"], (7.6, 8.0))]
    pairs = {(p.left_out, p.label): p for p in eval_pairs(spec, noisy + w_cfg2)}
    cfg2, cfg2_all, w = (pairs["v", "default / cfg2 vs cfg"], pairs["v", "default / cfg2_all vs cfg2"],
                         pairs["w", "default / cfg2 vs cfg"])
    assert cfg2_all.diffs == pytest.approx((-1.1, -3.0)) and cfg2_all.seed_df == 1
    assert cfg2_all.seed_sd == pytest.approx(statistics.stdev((-1.1, -3.0)))
    # cfg2 vs cfg: v's differences (0.6, 0.5) and w's (0.4, 0.6), 1 df each, pooled: 2 df
    assert w.diffs == pytest.approx((0.4, 0.6)) and cfg2.seed_df == w.seed_df == 2
    assert cfg2.seed_sd == w.seed_sd == pytest.approx(((0.005 + 0.02) / 2) ** 0.5)

def test_eval_pairs_name_evals_of_the_file(tmp_path):

    from ditlab.configlib import ConfigError

    for pairs, match in (("{cfg3: cfg}", "eval_pairs.cfg3: 'cfg3' is not in evals: of .*a.yaml \\(cfg, cfg2"),
                         ("{cfg2: cgf}", "eval_pairs.cfg2: cgf: 'cgf' is not in evals:"),
                         ("{cfg: cfg}", "eval_pairs.cfg: an eval against itself"),
                         ("[cfg2, cfg]", "eval_pairs must be a mapping of eval -> reference eval")):
        with pytest.raises(ConfigError, match=match):
            _eval_pairs_file(tmp_path, pairs)


def test_t_975_is_students_t_quantile():
    """The 95% intervals' t (pairs.t_975): the table for 1 to 30 degrees of freedom and the expansion above it,
    against scipy's quantile; no degrees of freedom is refused rather than given a normal quantile."""
    scipy_stats = pytest.importorskip("scipy.stats")
    from ditlab.experiments.pairs import t_975

    for df in [*range(1, 61), 100, 1000, 10**6]:
        assert t_975(df) == pytest.approx(float(scipy_stats.t.ppf(0.975, df)), abs=6e-5)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_975(0)


def test_each_variant_is_measured_against_the_best_paired_by_seed(tmp_path):
    """results.md's "Against the best": on each path / eval, the lowest mean FID among the variants with two or
    more seeds leads, and every other variant (not the baseline, whose pair the baseline table has; one seed or
    more) is paired with it by seed; no table where the baseline itself is best."""
    from ditlab.experiments.pairs import best_pairs

    (tmp_path / "tiny.yaml").write_text("model: {arch: DiT-S/2}\n")
    (tmp_path / "a.yaml").write_text("config: tiny.yaml\nseeds: [0, 1]\nbaseline: base\n"
                                     "variants: {base: {}, lr: {}, wd: {}, once: {}}\n")
    spec = load_ablation(tmp_path / "a.yaml")

    def rec(variant, seed, fid):
        return {**_record(seed, fid, 300), "variant": variant}

    # once: a single lucky seed does not lead; lr (mean 8.2) leads wd (8.9) and once (7.0 on seed 0 only)
    records = [rec("base", 0, 10.0), rec("base", 1, 11.0), rec("lr", 0, 8.0), rec("lr", 1, 8.4),
               rec("wd", 0, 8.9), rec("wd", 1, 8.9), rec("once", 0, 7.0)]
    pairs = best_pairs(spec, records)
    assert [(p.left_out, p.label, p.seeds) for p in pairs] == [("wd", "default: best lr", (0, 1)),
                                                                ("once", "default: best lr", (0,))]
    assert pairs[0].diffs == pytest.approx((0.9, 0.5)) and pairs[1].diffs == pytest.approx((-1.0,))
    # the seed noise pooled over base, lr and wd (variances 0.5, 0.08, 0; 1 df each): 3 df
    assert pairs[0].seed_df == 3 and pairs[0].seed_sd == pytest.approx((0.58 / 3) ** 0.5)
    text = write_markdown(tmp_path / "results.md", spec, records, {}).read_text()
    assert "Against the best" in text and "| wd | default: best lr | 8.20 | 8.90 | +0.70 (+0.90, +0.50) |" in text
    baseline_best = [r if r["variant"] != "base" else {**r, "fid": r["fid"] - 5} for r in records]
    assert best_pairs(spec, baseline_best) == []
    assert "Against the best" not in write_markdown(tmp_path / "results.md", spec, baseline_best, {}).read_text()

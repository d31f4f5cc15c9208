"""ditlab.experiments.timings: the model of a score's device time that --plan and --machine-left-s judge by."""
import json
import os

import pytest

from ditlab.diffusion.samplers import SAMPLERS, count_nfe
from ditlab.diffusion.schedules import FlowSchedule
from ditlab.diffusion.paths import single_stream_path
from ditlab.experiments.ablation_spec import SampleSpec
from ditlab.experiments.timings import (combine_rates, describe_rates, expected_nfe, measured_rates,
                                        passes_per_sample, score_s, scores_s, training_prior)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 2, 25])
def test_the_expected_nfe_is_what_the_sampler_counts_on_a_walked_path(sampler, steps):
    path = single_stream_path("image", FlowSchedule().time_grid(steps))
    assert expected_nfe(sampler, steps) == count_nfe(path, sampler)


def test_guidance_doubles_the_passes_except_at_scales_0_and_1():
    assert passes_per_sample(49, 1.0) == passes_per_sample(49, 0.0) == 49
    assert passes_per_sample(49, 2.5) == passes_per_sample(49, -1.0) == 98


def _score(folder, name, compiled=None, mtime=None, **fields):
    record = {"variant": "v", "seed": 0, "train_wall_seconds": 130.0, "train_seconds": 100.0, "num_samples": 100,
              "nfe": 10, "cfg_scale": 1.0, "fid_seconds": 1.0, **fields}
    if compiled is not None:
        record["sampler_compiled"] = compiled
    path = folder / "scores" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_compilation_is_measured_apart_from_the_rate(tmp_path):
    """A guided score costs twice the passes of an unguided one at the same NFE; the score that compiled its
    sampler gives the compilation's seconds, not a slower rate (before, the median of seconds per sample, with
    every compilation inside it, made a two-score unit ~110 s too long on an H100)."""
    _score(tmp_path, "v-s0__default__nocfg", compiled=False, sample_seconds=2.0)  # 100 x 10 passes: 2 ms a pass
    _score(tmp_path, "v-s0__default__cfg", compiled=True, cfg_scale=2.5, sample_seconds=4.0 + 30.0)
    rates = measured_rates(tmp_path)
    assert rates["pass_s"] == pytest.approx(0.002) and rates["compile_s"] == pytest.approx(30.0)
    assert rates["fid_s"] == pytest.approx(0.01) and rates["scores"] == 2
    guided = SampleSpec(num=1000, sampler="heun", steps=25, cfg_scale=2.5)
    unguided = SampleSpec(num=1000, sampler="heun", steps=25)
    assert score_s(rates, guided) == pytest.approx(1000 * (98 * 0.002 + 0.01))
    assert score_s(rates, unguided) == pytest.approx(1000 * (49 * 0.002 + 0.01))
    assert score_s(rates, unguided, loading=True) == pytest.approx(score_s(rates, unguided) + 30.0)
    # one compilation per network scored: the run's EMA, and each post-hoc EMA width another
    posthoc = SampleSpec(num=1000, sampler="heun", steps=25, ema_sigma_rel=0.1)
    assert scores_s(rates, [guided, unguided]) == pytest.approx(score_s(rates, guided) + score_s(rates, unguided) + 30)
    assert scores_s(rates, [guided, unguided, posthoc]) == pytest.approx(
        score_s(rates, guided) + score_s(rates, unguided) + score_s(rates, posthoc) + 60)
    assert "30 s to compile a run's sampler" in describe_rates(rates)


def test_without_a_score_that_reused_its_sampler_the_compilation_stays_in_the_rate(tmp_path):
    """Scores that all compiled (one per run, as a screen's): their median is the rate, and the compilation has
    no measure of its own: the runner then adds its default for loading a run (ablation.SCORE_LOAD_S)."""
    _score(tmp_path, "a-s0__default", compiled=True, sample_seconds=12.0, variant="a")
    _score(tmp_path, "b-s0__default", compiled=True, sample_seconds=22.0, variant="b")
    rates = measured_rates(tmp_path)
    assert rates["pass_s"] == pytest.approx(0.017) and rates["compile_s"] is None
    one = SampleSpec(num=100, sampler="euler", steps=10)
    assert score_s(rates, one, loading=True, default_load_s=30.0) == pytest.approx(100 * (10 * 0.017 + 0.01) + 30)
    assert "compilation inside the rate" in describe_rates(rates)


def test_older_scores_count_their_trainings_first_written_score_as_the_compiling_one(tmp_path):
    """Scores written before they recorded ``sampler_compiled``: a training's first score written (by file time,
    which the study archives keep) compiled the sampler, its later ones reused it."""
    _score(tmp_path, "v-s0__default__nocfg", sample_seconds=2.0, mtime=2_000_000)
    _score(tmp_path, "v-s0__default__cfg", cfg_scale=2.5, sample_seconds=4.0 + 25.0, mtime=1_000_000)
    _score(tmp_path, "w-s0__default__cfg", variant="w", cfg_scale=2.5, sample_seconds=4.0 + 35.0, mtime=3_000_000)
    rates = measured_rates(tmp_path)
    assert rates["pass_s"] == pytest.approx(0.002) and rates["compile_s"] == pytest.approx(30.0)  # median of 25, 35


def test_loading_a_network_and_reconstructing_a_posthoc_width_are_measured_apart(tmp_path):
    """A score that loaded its network records how long that took (``load_seconds``, 0 when it was loaded): a run's
    EMA and a post-hoc EMA width (reconstructed from snapshots first) have their own medians, and each network a
    unit scores costs its load and a compilation once."""
    _score(tmp_path, "v-s0__default__cfg", compiled=True, cfg_scale=2.5, sample_seconds=4.0 + 30.0, load_seconds=2.0)
    _score(tmp_path, "v-s0__default__nocfg", compiled=False, sample_seconds=2.0, load_seconds=0.0)
    _score(tmp_path, "v-s0__default__pe10", compiled=True, sample_seconds=2.0 + 30.0, load_seconds=12.0,
           ema_sigma_rel=0.1)
    rates = measured_rates(tmp_path)
    assert (rates["load_s"], rates["posthoc_load_s"], rates["compile_s"]) == (2.0, 12.0, pytest.approx(30.0))
    plain = SampleSpec(num=100, sampler="euler", steps=10)
    posthoc = SampleSpec(num=100, sampler="euler", steps=10, ema_sigma_rel=0.1)
    assert score_s(rates, plain, loading=True) == pytest.approx(score_s(rates, plain) + 2 + 30)
    assert score_s(rates, posthoc, loading=True) == pytest.approx(score_s(rates, posthoc) + 12 + 30)
    assert scores_s(rates, [plain, plain, posthoc]) == pytest.approx(
        2 * score_s(rates, plain) + score_s(rates, posthoc) + (2 + 30) + (12 + 30))
    assert describe_rates(rates).endswith("30 s to compile a run's sampler, 2 s to load it (12 s for a post-hoc EMA "
                                          "width)")
    # without post-hoc loads measured, a width is expected to load like the run's EMA; the rate stays unmeasured, so
    # that --rates-from's folder can fill it (combine_rates), as it fills a load the folder has not timed
    (tmp_path / "scores" / "v-s0__default__pe10.json").unlink()
    rates = measured_rates(tmp_path)
    assert rates["posthoc_load_s"] is None and score_s(rates, posthoc, loading=True) == pytest.approx(
        score_s(rates, posthoc) + 2 + 30)
    assert describe_rates(rates).endswith("2 s to load it")
    other = {**rates, "load_s": 3.0, "posthoc_load_s": 12.0, "source": "other"}
    assert combine_rates(rates, other)["posthoc_load_s"] == 12.0 and combine_rates(rates, other)["load_s"] == 2.0


def test_before_any_timed_score_a_pass_is_priced_at_a_third_of_a_trained_image():
    """A fresh folder (a headline run) has no timed score: a training step is a forward and a backward pass, so a
    sampling pass of one sample is priced at a third of a trained image's seconds. The H200's headline run (9,958
    steps of 256 in 420.7 s) timed its passes at 70% of that: the prior errs on the safe side."""
    prior = training_prior(420.7, 9958 * 256)
    assert prior["pass_s"] == pytest.approx(5.5e-5, rel=0.01)
    guided = SampleSpec(num=10000, sampler="heun", steps=25, cfg_scale=2.5)
    assert score_s(prior, guided) == pytest.approx(10000 * 98 * 5.5e-5, rel=0.01)  # ~54 s, FID and loading apart
    assert score_s(prior, guided, loading=True, default_load_s=30.0) == pytest.approx(score_s(prior, guided) + 30.0)
    measured_pass_s = 38.4e-6  # measured_rates of that folder's ten scores
    assert measured_pass_s < prior["pass_s"]
    assert training_prior(0.0, 100) is None and training_prior(10.0, 0) is None


def test_a_warm_compile_cache_is_measured_apart_from_a_new_networks_set_up(tmp_path):
    """A training whose network its machine had compiled before set up in 3-4 s on an H100, a new network in 40-50
    s (thirty-third session): the median of both would err both ways. Scores that do not say (older files, a
    resumed run, compilation off) count with the new networks; with only warm ones timed, those are all there is."""
    _score(tmp_path, "a-s0__default", variant="a", train_wall_seconds=460.0, train_seconds=420.0,
           train_compile_cache="cold", sample_seconds=2.0)
    _score(tmp_path, "a-s1__default", variant="a", seed=1, train_wall_seconds=424.0, train_seconds=420.0,
           train_compile_cache="warm", sample_seconds=2.0)
    _score(tmp_path, "b-s0__default", variant="b", train_wall_seconds=470.0, train_seconds=420.0, sample_seconds=2.0)
    rates = measured_rates(tmp_path)
    assert rates["setup_s"] == pytest.approx(45.0) and rates["setup_warm_s"] == pytest.approx(4.0)
    assert describe_rates(rates).startswith(
        "45 s of set-up a training (4 s for a network its machine compiled before), ")
    for name in ("a-s0__default", "b-s0__default"):
        (tmp_path / "scores" / f"{name}.json").unlink()
    rates = measured_rates(tmp_path)
    assert rates["setup_s"] == pytest.approx(4.0) and rates["setup_warm_s"] == pytest.approx(4.0)


def test_a_training_with_fid_during_training_does_not_set_the_set_up(tmp_path):
    """Evaluations during training are off its clock but in its wall time: its wall less its timed seconds is not
    its set-up (training_eval_s prices the evaluations on their own)."""
    _score(tmp_path, "a-s0__default", variant="a", train_wall_seconds=460.0, train_seconds=420.0, sample_seconds=2.0)
    _score(tmp_path, "long-s0__default", variant="long", train_wall_seconds=1200.0, train_seconds=900.0,
           sample_seconds=2.0, eval_curve=[[300.0, 4000, 12.0], [900.0, 12000, 8.0]])
    _score(tmp_path, "long-s1__default", variant="long", seed=1, train_wall_seconds=1150.0, train_seconds=900.0,
           sample_seconds=2.0, eval_curve=[[300.0, 4000, 12.5]])
    assert measured_rates(tmp_path)["setup_s"] == pytest.approx(40.0)


def test_rates_from_fill_what_a_folder_has_not_measured(tmp_path):
    """A folder whose timed trainings all set up on a warm compile cache would price a fresh machine's training at
    ~4 s of set-up: --rates-from supplies a new network's set-up, and the compilation and loading the folder never
    timed; the folder's own measures (its pass rate, its warm set-up) come first, and each variant keeps only its
    own training speed."""
    own_dir, other_dir = tmp_path / "own", tmp_path / "other"
    _score(own_dir, "preset-s0__default", variant="preset", train_wall_seconds=424.0, train_seconds=420.0,
           train_steps=8400, train_compile_cache="warm", sample_seconds=2.0, sampler_compiled=False)
    _score(other_dir, "a-s0__default__cfg", variant="a", train_wall_seconds=465.0, train_seconds=420.0,
           train_steps=4200, train_compile_cache="cold", sample_seconds=8.0 + 30.0, sampler_compiled=True,
           cfg_scale=2.5, load_seconds=3.0)
    _score(other_dir, "a-s0__default__nocfg", variant="a", train_wall_seconds=465.0, train_seconds=420.0,
           train_steps=4200, sample_seconds=4.0, sampler_compiled=False)
    own, other = measured_rates(own_dir), {**measured_rates(other_dir), "source": "OTHER"}
    assert own["setup_s"] == pytest.approx(4.0) and not own["setup_new_timed"] and own["compile_s"] is None
    combined = combine_rates(own, other)
    assert combined["setup_s"] == pytest.approx(45.0) and combined["setup_warm_s"] == pytest.approx(4.0)
    assert combined["compile_s"] == pytest.approx(30.0) and combined["load_s"] == 3.0
    assert combined["pass_s"] == own["pass_s"] and combined["scores"] == 1  # its own rate, its own count
    assert combined["variant_steps_per_s"] == {"preset": 20.0} and combined["steps_per_s"] == 20.0
    # (no post-hoc width was timed in either: that rate stays unmeasured, and a width is priced as a plain load)
    assert combined["source"] == "OTHER" and set(combined["filled"]) == {"setup_s", "compile_s", "load_s"}
    assert combined["posthoc_load_s"] is None
    # a folder whose every score compiled its sampler has the compilation inside its pass rate: not added again
    _score(own_dir, "preset-s0__default", variant="preset", train_wall_seconds=424.0, train_seconds=420.0,
           train_steps=8400, train_compile_cache="warm", sample_seconds=2.0 + 30.0, sampler_compiled=True)
    compiled = measured_rates(own_dir)
    assert compiled["compile_in_pass"] and combine_rates(compiled, other)["compile_s"] is None
    # the other way round only the warm set-up is missing; a folder with nothing missing is left as it is
    assert combine_rates(other, own) == {**other, "setup_warm_s": 4.0, "source": None, "filled": ["setup_warm_s"]}
    assert combine_rates(combined, other) == combined
    assert combine_rates(None, other) is other and combine_rates(own, None) is own

"""The rates a study has measured so far, from its score files: what ``ditlab ablate --plan`` estimates the device
time left with, and what the runner judges a unit's length by before it has timed one itself.

A score's sampling time is modelled as its samples times its network passes per sample (the sampler's NFE, twice
that under classifier-free guidance, which doubles the batch) at one measured rate, plus, for the first score of a
network, loading it (a post-hoc EMA width is reconstructed from the run's snapshots first) and compiling its
sampler (ditlab.generation.compile_for_sampling; 20-60 s on an H100, against ~25 s for 10,000 unguided Heun-25
samples). Before this model the rate was the median of seconds per sample over all scores, compilation included:
the screen's scores (5,000 samples, one per run, each compiling) made a final stage unit of two FID-10k scores look
~110 s longer than it took, and an unguided score cost as much as a guided one. Guidance within an interval
(cfg_interval) guides only some steps, so the model overestimates those a little (measured: a guided Heun-25 score
in (0.28, 5.42] took 1.83x the unguided one, the model says 2x).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from ditlab.experiments.study_files import study_files


def expected_nfe(sampler: str, steps: int) -> int:
    """Network evaluations of ``steps`` steps of ``sampler`` on one stream: Heun's last step to t = 0 is an Euler
    step (ditlab.diffusion.samplers.count_nfe counts a walked path exactly)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def passes_per_sample(nfe: int, cfg_scale: float) -> int:
    """Network passes one sample costs: guidance (a scale other than 0 or 1) runs the conditional and the
    unconditional model as one batch of twice the rows."""
    return nfe * (1 if cfg_scale in (0.0, 1.0) else 2)


def _sample_passes(sample) -> int:
    return passes_per_sample(expected_nfe(sample.sampler, sample.steps), sample.cfg_scale)


def measured_rates(out: Path) -> dict | None:
    """What the study's score files under ``out`` (those carrying their timings) measured; None before any does:

    - ``setup_s``: the median set-up seconds of a training (its wall minus its timed seconds) of a network new to
      its machine, or not known to be otherwise (older score files, a resumed run, compilation off); a training
      with FID during training (``eval_curve``) is left out, its evaluations being in its wall time;
    - ``setup_new_timed``: whether a training of a new network set that median (else it is the warm one's, below);
    - ``setup_warm_s``: the same of a network its machine had compiled before (``train_compile_cache`` "warm":
      ditlab.train.compile_cache; 3-4 s against 40-50 s on an H100), None before any;
    - ``pass_s``: seconds per network pass of one sample, the median over the scores that did not compile their
      sampler (over all scores while there is none: compilation is then inside the rate, as it is for scores
      written before they recorded it, where a training's first score written counts as the compiling one);
    - ``compile_in_pass``: whether ``pass_s`` holds the compilation so (no score reused its sampler);
    - ``compile_s``: the median extra seconds of a score that compiled its sampler (None without both kinds);
    - ``load_s`` and ``posthoc_load_s``: the median seconds of loading a run's network before its first score, and
      of reconstructing and loading a post-hoc EMA width (``load_seconds``, recorded since the twenty-fifth
      session; None before any);
    - ``fid_s``: FID seconds per sample;
    - ``steps_per_s`` and ``variant_steps_per_s``: training steps per timed second, the study's median and each
      variant's (FID during training is every so many steps)."""
    setup, setup_warm, rate, by_variant = [], [], [], {}
    scores_by_training: dict[tuple, list[tuple[float, dict]]] = {}
    for path in study_files(out, "scores/*.json"):
        try:
            r = json.loads(path.read_text())
            written = path.stat().st_mtime
        except (OSError, ValueError):
            continue  # a file being written by a running study: the rates do without it
        if not {"train_wall_seconds", "fid_seconds", "sample_seconds", "num_samples"} <= r.keys():
            continue
        if r.get("carried_from"):  # a copy of an earlier stage's score (ditlab.experiments.stages.carry_scores)
            continue
        key = (path.parent.parent, r.get("variant"), r.get("seed"))  # a training once, whatever its scores
        if key not in scores_by_training and r["train_wall_seconds"] > 0:
            if not r.get("eval_curve"):  # FID during training is in its wall time, and training_eval_s prices it
                (setup_warm if r.get("train_compile_cache") == "warm" else setup).append(
                    max(0.0, r["train_wall_seconds"] - r.get("train_seconds", 0.0)))
            if r.get("train_seconds", 0.0) > 0 and r.get("train_steps"):
                rate.append(r["train_steps"] / r["train_seconds"])
                by_variant.setdefault(r.get("variant"), []).append(rate[-1])
        scores_by_training.setdefault(key, []).append((written, r))
    if not scores_by_training:
        return None
    warm, cold, fid, loads, posthoc_loads = [], [], [], [], []
    for scores in scores_by_training.values():
        first_written = min(scores, key=lambda s: (s[0], s[1].get("eval", "")))[1]
        for _, r in scores:
            if r.get("load_seconds"):  # 0: its network was loaded for an earlier score
                (posthoc_loads if r.get("ema_sigma_rel") else loads).append(r["load_seconds"])
            compiled = r.get("sampler_compiled", r is first_written)
            num = max(1, r["num_samples"])
            passes = num * passes_per_sample(r.get("nfe") or 1, r.get("cfg_scale", 1.0))
            (cold if compiled else warm).append((r["sample_seconds"], passes))
            fid.append(r["fid_seconds"] / num)
    pass_s = statistics.median(s / p for s, p in (warm or cold))
    compile_s = statistics.median(max(0.0, s - p * pass_s) for s, p in cold) if warm and cold else None
    load_s = statistics.median(loads) if loads else None
    warm_s = statistics.median(setup_warm) if setup_warm else None
    setup_s = statistics.median(setup) if setup else (warm_s or 0.0)  # only warm ones timed: the best known
    return {"setup_s": setup_s, "setup_warm_s": warm_s, "setup_new_timed": bool(setup),
            "pass_s": pass_s, "compile_in_pass": not warm, "compile_s": compile_s,
            "load_s": load_s, "posthoc_load_s": statistics.median(posthoc_loads) if posthoc_loads else None,
            "fid_s": statistics.median(fid), "scores": len(fid),
            "steps_per_s": statistics.median(rate) if rate else 0.0,
            "variant_steps_per_s": {v: statistics.median(r) for v, r in by_variant.items()}}


# what a folder may not have measured, and --rates-from's folder then supplies (combine_rates)
_GAPS = ("setup_warm_s", "load_s", "posthoc_load_s")


def folder_rates(out: Path, rates_from: dict | None = None, study: Path | None = None) -> dict | None:
    """The rates that judge the units of folder ``out``: its own measured_rates, or while it has timed nothing,
    those of ``study`` (the whole study, when ``out`` is one of its stage folders: a final stage's first unit is
    priced by the screening's scores), with what neither measured taken from --rates-from (combine_rates). The
    runner (--machine-left-s) and --plan both ask this, so that the plan says what the runner will judge."""
    rates = measured_rates(out)
    if rates is None and study is not None:
        rates = measured_rates(study)
    return combine_rates(rates, rates_from)


def combine_rates(own: dict | None, other: dict | None) -> dict | None:
    """A folder's own rates (measured_rates), with the gaps filled from ``other`` (--rates-from's): its own come
    first, but what it has not measured (a new network's set-up, where every training it timed reused a warm
    compile cache; compiling a sampler; loading a network; the training speed) is taken from ``other`` rather than
    left to the runner's defaults. Before, a folder with any timed score ignored --rates-from whole, so a second
    seed trained on a warm machine priced a fresh machine's first training at ~4 s of set-up against 40-50 s.
    Each variant's own training speed is not taken: a name can mean another recipe in another study, and a
    compilation is not taken where the folder's pass rate already holds one (``compile_in_pass``: every score it
    timed compiled its sampler), which would count it twice. ``filled`` names the keys taken from ``other``;
    ``source`` names its folder."""
    if own is None or other is None:
        return own or other
    filled = [k for k in _GAPS if own.get(k) is None and other.get(k) is not None]
    if own.get("compile_s") is None and not own.get("compile_in_pass") and other.get("compile_s") is not None:
        filled.append("compile_s")
    combined = {**own, **{k: other[k] for k in filled}}
    if not own.get("setup_new_timed") and other.get("setup_new_timed"):
        combined["setup_s"], combined["setup_new_timed"] = other["setup_s"], True
        filled.append("setup_s")
    if not own.get("steps_per_s") and other.get("steps_per_s"):
        combined["steps_per_s"] = other["steps_per_s"]
        filled.append("steps_per_s")
    if filled:
        combined["source"], combined["filled"] = other.get("source"), filled
    return combined


def load_rates_from(folder) -> dict:
    """``ditlab ablate --rates-from DIR``: the rates DIR's timed score files measured (another study, or a collected
    archive restored there, best of the same machine kind), for a folder that has timed nothing yet: a headline's or
    a time-to-FID run's, whose first unit --machine-left-s and --deadline-s would otherwise judge by its time limit
    alone. ``source`` names DIR in --plan's total. A clear error when DIR holds no timed score."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"ablate: --rates-from {folder}: no such folder")
    rates = measured_rates(folder)
    if rates is None:
        raise ValueError(f"ablate: --rates-from {folder}: no timed score file under it (scores/*.json with "
                         "train_wall_seconds, sample_seconds and fid_seconds, as `ditlab ablate` writes them)")
    return {**rates, "source": str(folder)}


def training_prior(timed_seconds: float, images: int) -> dict | None:
    """Rates to judge a run's scores by before the study has timed any score (a fresh folder, such as a headline's):
    a network pass of one sample at a third of the run's timed seconds per trained image (a training step is a
    forward pass and a backward pass of about twice its cost), with FID, loading and compiling left to the caller's
    default. On the safe side: at DiT-S/2 the timed pass took 0.77x this on an H100 and 0.70x on an H200
    (twenty-sixth session). None without a timed training."""
    if timed_seconds <= 0 or images <= 0:
        return None
    return {"setup_s": 0.0, "setup_warm_s": None, "pass_s": timed_seconds / (3 * images), "compile_s": None,
            "load_s": None, "posthoc_load_s": None, "fid_s": 0.0, "scores": 0, "steps_per_s": 0.0,
            "variant_steps_per_s": {}}


def network_s(rates: dict, sample, default_s: float = 0.0) -> float:
    """Device seconds of getting the network ``sample`` scores ready before its first score: loading it (a post-hoc
    EMA width reconstructed first) and compiling its sampler, as measured; ``default_s`` while the study has
    measured neither."""
    load = rates.get("load_s")
    if getattr(sample, "ema_sigma_rel", 0.0) and rates.get("posthoc_load_s") is not None:
        load = rates["posthoc_load_s"]  # else a plain load: the best known while no width has been timed
    if load is None and rates.get("compile_s") is None:
        return default_s
    return (load or 0.0) + (rates.get("compile_s") or 0.0)


def score_s(rates: dict, sample, loading: bool = False, default_load_s: float = 0.0) -> float:
    """Device seconds of one score with ``sample``'s settings (num, sampler, steps, cfg_scale): its samples'
    network passes and their FID at the measured rates, plus getting its network ready when ``loading``
    (network_s, ``default_load_s`` while the study has not measured it)."""
    seconds = sample.num * (_sample_passes(sample) * rates["pass_s"] + rates["fid_s"])
    return seconds + (network_s(rates, sample, default_load_s) if loading else 0.0)


def scores_s(rates: dict, samples: list) -> float:
    """Device seconds of scoring one run on ``samples`` (one per score): each score, and each network it loads
    (the run's EMA, and each post-hoc EMA width another) made ready once."""
    first = {}
    for s in samples:
        first.setdefault(getattr(s, "ema_sigma_rel", 0.0), s)
    return sum(score_s(rates, s) for s in samples) + sum(network_s(rates, s) for s in first.values())


def training_eval_s(rates: dict, variant: str, seconds: float, steps: int, eval_every: int, eval_num: int,
                    sample) -> float:
    """Device seconds of the FID evaluations during ``seconds`` of timed training (train.eval_every: one every
    ``eval_every`` steps, ``eval_num`` samples each with ``sample``'s sampler, steps and guidance, off the training
    clock, the sampler compiled at the first), at the variant's measured steps per second (the study's median where
    the variant has none yet), at most ``steps`` steps; 0 without evaluations or a measured rate."""
    if not eval_every or seconds <= 0:
        return 0.0
    per_s = rates.get("variant_steps_per_s", {}).get(variant) or rates.get("steps_per_s", 0.0)
    evaluations = int(min(steps, per_s * seconds) // eval_every)
    if not evaluations:
        return 0.0
    per_eval = score_s(rates, dataclasses.replace(sample, num=eval_num))
    return evaluations * per_eval + (rates.get("compile_s") or 0.0)


def describe_rates(rates: dict) -> str:
    """The rates in words, for --plan's total."""
    compiling = (f", {rates['compile_s']:.0f} s to compile a run's sampler" if rates.get("compile_s") is not None
                 else ", compilation inside the rate")
    if rates.get("load_s") is not None:
        compiling += f", {rates['load_s']:.0f} s to load it"
    if rates.get("posthoc_load_s") is not None and rates.get("posthoc_load_s") != rates.get("load_s"):
        compiling += f" ({rates['posthoc_load_s']:.0f} s for a post-hoc EMA width)"
    setup = f"{rates['setup_s']:.0f} s of set-up a training"
    if rates.get("setup_warm_s") is not None:
        setup += f" ({rates['setup_warm_s']:.0f} s for a network its machine compiled before)"
    return (f"{setup}, {rates['pass_s'] * 1000:.3f} ms a sample per network "
            f"pass and {rates['fid_s'] * 1000:.2f} ms for its FID{compiling}")

"""The ablation's tables and plot, from the per-(variant, seed, path) score files.

results.csv has one row per score; results.md a table of FID per (variant, path, eval), the mean over
training seeds with each seed's value when there are several; results.png a bar chart of it. Runs that
measured FID during training (budget eval_every) add time-to-FID columns (the training seconds at which the
in-training FID first reached each of the file's time_to_fid values; mean over the seeds that reached it)
and results_curves.png, FID against training time. A stage that trained a combination without each of its
variants (leave_one_out: combo_STAGE_without_NAME) adds a table of what each change adds, paired by seed, and
results_leave_one_out.png, each seed's difference beside the seed noise pooled over the stage.
"""
from __future__ import annotations

import csv
import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CSV_COLUMNS = ("variant", "seed", "path", "eval", "fid", "nfe", "sampler", "steps", "cfg_scale", "cfg_interval",
               "num_samples", "sample_seed", "train_steps", "train_images", "train_seconds", "params",
               "gflops_per_image", "task", "overrides", "command_overrides", "machine", "note")
LIST_COLUMNS = ("overrides", "command_overrides")  # written space-separated, as on a command line
NOT_MEASURED = "n/a"  # time to FID of a score that FID during training did not measure (another eval or path)


def read_scores(out: Path, spec) -> list[dict]:
    """Score records in the order of the ablation file (variants, then paths, then seeds)."""
    records = [json.loads(p.read_text()) for p in sorted((out / "scores").glob("*.json"))]
    for r in records:
        r.setdefault("eval", "")  # score files of before named evals
    order = {(v.name, p, e): (i, j) for i, v in enumerate(spec.variants) for j, (p, e, _) in enumerate(spec.scores_of(v))}
    known = [r for r in records if _key(r) in order]
    curve_keys = {(v.name, "default", spec.curve_eval(v)) for v in spec.variants}
    for r in known:
        if _key(r) not in curve_keys:  # the curve sampled another eval's settings: its times are not this score's
            r.pop("time_to_fid", None)  # (score files of before 2026-12-07 carry them in every score of a run)
    return sorted(known, key=lambda r: (*order[_key(r)], r["seed"]))


def _key(r: dict) -> tuple[str, str, str]:
    return r["variant"], r["path"], r.get("eval", "")


def group_by_pair(records: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """[(variant, "path" or "path / eval", records of its seeds)] in the records' order."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        groups.setdefault(_key(r), []).append(r)
    return [(v, f"{p} / {e}" if e else p, rs) for (v, p, e), rs in groups.items()]


def _fmt_time(rs: list[dict], threshold: str) -> str:
    """When the seeds that reached the threshold did, as the span between the evaluation before and the first one
    at or below it (means over those seeds; "≤T" where it was the first evaluation), with how many did when not
    all; n/a for a score the curve does not describe (another eval or path than FID during training sampled)."""
    if not any("time_to_fid" in r for r in rs):
        return NOT_MEASURED
    times = [(r.get("time_to_fid", {}).get(threshold), r.get("eval_curve") or []) for r in rs]
    hit = [(t, _evaluation_before(curve, t)) for t, curve in times if t is not None]
    if not hit:
        return "—"
    at, before = statistics.mean(t for t, _ in hit), statistics.mean(b for _, b in hit)
    text = f"≤{at:.0f}" if before == 0 else f"{before:.0f}–{at:.0f}"
    return text if len(hit) == len(times) else f"{text} ({len(hit)}/{len(times)} seeds)"


def _evaluation_before(curve: list[list[float]], seconds: float) -> float:
    """The training seconds of the evaluation before the one at ``seconds`` (0: that was the first)."""
    return max((sec for sec, _, _ in curve if sec < seconds), default=0.0)


def _curve_settings(spec, records: list[dict]) -> str:
    """Which eval's sample settings FID during training used, for the time-to-FID sentence: named when every
    variant with a curve shares it (the file's evals have names), else each variant's first eval."""
    with_curve = {r["variant"] for r in records if r.get("eval_curve")}
    names = {spec.curve_eval(v) for v in spec.variants if v.name in with_curve}
    if names == {""}:  # no named evals: the file's sample settings, which the sentence above gives
        return ""
    if len(names) == 1:
        return f" with the **{names.pop()}** eval's settings (on the default path)"
    return " with each variant's first eval's settings (on the default path)"


def _fmt_fid(rs: list[dict]) -> str:
    fids = [r["fid"] for r in rs]
    if len(fids) == 1:
        return f"{fids[0]:.2f}"
    return f"{statistics.mean(fids):.2f} ± {statistics.stdev(fids):.2f} ({', '.join(f'{f:.1f}' for f in fids)})"


def _fmt_count(rs: list[dict], key: str) -> str:
    """A per-run count (train steps, images) of a pair's seeds: the value when they agree, else the mean and
    each seed's (time-limited runs of different seeds take different numbers of steps)."""
    values = [r[key] for r in rs]
    if len(set(values)) == 1:
        return f"{values[0]:,}"
    return f"{round(statistics.mean(values)):,} ({', '.join(f'{v:,}' for v in values)})"


def write_csv(path: Path, records: list[dict], time_to_fid=()) -> Path:
    """One row per score; time_to_fid_X columns (training seconds, empty: never, n/a: a score of another eval or
    path than FID during training measured) for the file's thresholds."""
    extra = [f"time_to_fid_{x:g}" for x in time_to_fid]
    rows = [{**r, **{c: r["time_to_fid"].get(c[len("time_to_fid_"):]) if "time_to_fid" in r else NOT_MEASURED
                     for c in extra},
             **{c: " ".join(r[c]) for c in LIST_COLUMNS if c in r}} for r in records]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS + tuple(extra), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def write_markdown(path: Path, spec, records: list[dict], scorer: dict,
                   pairs: tuple[list, list, list] | None = None) -> Path:
    """results.md; ``pairs``: (baseline_pairs, leave_one_out_pairs, eval_pairs) where the caller has built them for
    its plots too (write_results), else built here."""
    s, b = spec.sample, spec.budget
    lines = [
        f"# Ablation {spec.source.name}",
        "",
        f"Budget per run: {'%g s of training' % b.time_limit if b.time_limit else ''}"
        f"{' or ' if b.time_limit else ''}{b.steps} steps; training seeds {sorted({r['seed'] for r in records}) or spec.seeds}. Samples: {s.num} per pair, "
        f"{_settings(s)}, sample seed {s.seed}. FID-{s.num} {_reference_text(records, scorer)}.",
    ]
    if spec.evals:
        lines += ["", "Evals: " + "; ".join(f"**{name}** {_settings(e)}" for name, e in spec.evals.items()) + "."]
    lines += _machine_lines(records)
    lines += _command_override_lines(records)
    times = [f"{x:g}" for x in spec.time_to_fid] if any(r.get("eval_curve") for r in records) else []
    if times:
        lines += ["", f"Time to FID: training seconds (evaluation excluded) until the FID of {b.eval_num} samples "
                      f"measured every {b.eval_every} steps during training{_curve_settings(spec, records)} first "
                      "reached the value: between the evaluation before and that one (≤: at the first "
                      f"evaluation); — never; {NOT_MEASURED}: a score with other settings than those."]
    head = ["variant", "path", "FID", "NFE", *[f"s to FID {t}" for t in times], "train steps", "train images",
            "params (M)", "GFLOPs/img", "note"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, p, rs in group_by_pair(records):
        r = rs[0]
        cells = [variant, p, _fmt_fid(rs), str(r["nfe"]), *[_fmt_time(rs, t) for t in times], _fmt_count(rs, "train_steps"),
                 _fmt_count(rs, "train_images"), f"{r['params'] / 1e6:.2f}", f"{r['gflops_per_image']:.2f}", r.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    baseline, leave_one_out, evals = pairs if pairs is not None else _pairs(spec, records)
    lines += _baseline_lines(spec, baseline)
    lines += _leave_one_out_lines(leave_one_out)
    lines += _eval_pair_lines(evals)
    missing = [(v.name, p, e) for v in spec.variants for p, e, _ in spec.scores_of(v)
               if not any(_key(r) == (v.name, p, e) for r in records)]
    if missing:
        lines += ["", f"Not scored yet: {', '.join(f'{v}/{p}' + (f'/{e}' if e else '') for v, p, e in missing)}."]
    failed = _failures(path.parent, spec)
    if failed:
        lines += ["", "Failed (failed/UNIT.json has the traceback; tried again last by the next invocation): "
                  + "; ".join(f"{name}: {error}" for name, error in failed) + "."]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class LeaveOneOut:
    """One change on one (path, eval), paired by training seed: the FIDs with and without it on the seeds both
    runs have, and the seed noise of the stage there (``seed_sd``: the seed-to-seed standard deviation pooled over
    the stage's variants with two or more seeds on that path / eval, ``seed_df`` its degrees of freedom; None, 0
    without such a variant). The change is one of a combination's (leave_one_out_pairs: ``without`` is the
    combination less it) or a whole variant's overrides (baseline_pairs: ``without`` is the baseline)."""
    left_out: str  # the change: the variant left out of the combination, or the variant against the baseline
    label: str  # "path" or "path / eval"
    seeds: tuple[int, ...]
    with_it: tuple[float, ...]
    without: tuple[float, ...]
    seed_sd: float | None = None
    seed_df: int = 0

    @property
    def diffs(self) -> tuple[float, ...]:
        """Without minus with, per seed: positive means the change helps on top of the rest."""
        return tuple(w - c for w, c in zip(self.without, self.with_it))

    @property
    def two_se(self) -> float | None:
        """Twice the standard error of the mean difference: two runs of n seeds each, with the pooled seed
        standard deviation, differ by sd * sqrt(2 / n) (cautious: runs of one seed may share their data order, and
        then a paired difference varies less). A mean difference within it is no more than seed noise."""
        return None if self.seed_sd is None else 2.0 * self.seed_sd * (2.0 / len(self.seeds)) ** 0.5


@dataclass(frozen=True)
class EvalPair(LeaveOneOut):
    """One eval of a variant against its reference eval (``eval_pairs:``) on the same trainings, paired by training
    seed: ``left_out`` is the variant, ``with_it`` the eval's FIDs and ``without`` the reference's, so ``diffs`` is
    the reference's FID minus the eval's (positive: the eval is better). Two evals of one training share that
    training's luck, which the seed-to-seed spread of FID (LeaveOneOut's noise) counts in full: here ``seed_sd`` is
    the standard deviation of a paired difference itself, pooled over the file's eval pairs with two or more seeds
    (``seed_df`` its degrees of freedom)."""

    @property
    def two_se(self) -> float | None:
        """Twice the standard error of the mean of n paired differences: sd / sqrt(n), doubled."""
        return None if self.seed_sd is None else 2.0 * self.seed_sd / len(self.seeds) ** 0.5


def pooled_seed_sd(records: list[dict]) -> dict[str, tuple[float, int]]:
    """"path" or "path / eval" (group_by_pair's label) -> (the seed-to-seed standard deviation of FID pooled over
    the variants that have two or more training seeds there, its degrees of freedom: the sum of each variant's
    seeds less one)."""
    sums: dict[str, list[float]] = {}
    for _, label, rs in group_by_pair(records):
        if len(rs) > 1:
            acc = sums.setdefault(label, [0.0, 0])
            acc[0] += statistics.variance([r["fid"] for r in rs]) * (len(rs) - 1)
            acc[1] += len(rs) - 1
    return {label: ((ss / df) ** 0.5, df) for label, (ss, df) in sums.items()}


def leave_one_out_pairs(spec, records: list[dict]) -> list[LeaveOneOut]:
    """For each variant of the file that is a combination without one of its changes (``Variant.left_out_of``, set
    by ditlab.experiments.promotion.leave_one_out) and each (path, eval) both it and the combination have scores of,
    the pair on the seeds both have, with the seed noise pooled over all of ``records``. Empty without such
    variants."""
    fids = _fids_by_key(records)
    noise = pooled_seed_sd(records)
    pairs = []
    for v in spec.variants:
        if not v.left_out_of:
            continue
        combo, gone = v.left_out_of
        for (variant, p, e), without in fids.items():
            if variant == v.name:
                pairs.append(_paired(gone, p, e, fids.get((combo, p, e), {}), without, noise))
    return [pair for pair in pairs if pair]


def _fids_by_key(records: list[dict]) -> dict[tuple[str, str, str], dict[int, float]]:
    """(variant, path, eval) -> {training seed: FID}."""
    fids: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in records:
        fids.setdefault(_key(r), {})[r["seed"]] = r["fid"]
    return fids


def _paired(change: str, path: str, eval_name: str, with_it: dict[int, float], without: dict[int, float],
            noise: dict[str, tuple[float, int]]) -> LeaveOneOut | None:
    """The pair on the training seeds both sides have (None without any), with the pooled seed noise of its
    path / eval."""
    seeds = tuple(sorted(set(without) & set(with_it)))
    if not seeds:
        return None
    label = f"{path} / {eval_name}" if eval_name else path
    sd, df = noise.get(label, (None, 0))
    return LeaveOneOut(change, label, seeds, tuple(with_it[s] for s in seeds), tuple(without[s] for s in seeds),
                       sd, df)


def baseline_pairs(spec, records: list[dict]) -> list[LeaveOneOut]:
    """With ``spec.baseline`` set: for every other variant and each of its (path, eval) scores, the variant (with
    its changes) against the baseline (without them) on the training seeds both have, with the seed noise pooled
    over ``records``. The baseline's score on the same path and eval is the reference, or, where the baseline has
    one path (a single-scale baseline beside LIFT's paths), its score on that path and the eval. Variants with
    ``against_baseline: false`` are left out of both the pairs and the pooled noise."""
    if not spec.baseline:
        return []
    fids = _fids_by_key(records)
    base_paths = {p for v, p, _ in fids if v == spec.baseline}
    left_out = set(spec.apart_from_baseline())
    # nor in the seed noise: an FID on another scale (16x16 samples against the 32x32 reference) has its own
    noise = pooled_seed_sd([r for r in records if r["variant"] not in left_out])
    pairs = []
    for (variant, p, e), with_it in fids.items():
        if variant != spec.baseline and variant not in left_out:
            ref_path = p if p in base_paths or len(base_paths) != 1 else next(iter(base_paths))
            pairs.append(_paired(variant, p, e, with_it, fids.get((spec.baseline, ref_path, e), {}), noise))
    return [pair for pair in pairs if pair]


def eval_pairs(spec, records: list[dict]) -> list[EvalPair]:
    """For each (variant, path) scored on both an eval of ``spec.eval_pairs`` and its reference, the pair on the
    training seeds both scores have, in the order of ``records``; the noise of a paired difference is pooled over
    all of them (EvalPair)."""
    if not spec.eval_pairs:
        return []
    fids = _fids_by_key(records)
    found = []  # (variant, path, eval, reference, seeds)
    for (variant, p, e), fid in fids.items():
        ref = spec.eval_pairs.get(e)
        if ref is not None and (seeds := tuple(sorted(set(fid) & set(fids.get((variant, p, ref), {}))))):
            found.append((variant, p, e, ref, seeds))
    sum_sq, df = 0.0, 0
    for variant, p, e, ref, seeds in found:
        if len(seeds) > 1:
            sum_sq += statistics.variance([fids[variant, p, ref][s] - fids[variant, p, e][s] for s in seeds]) \
                * (len(seeds) - 1)
            df += len(seeds) - 1
    sd = (sum_sq / df) ** 0.5 if df else None
    return [EvalPair(variant, f"{p} / {e} vs {ref}", seeds, tuple(fids[variant, p, e][s] for s in seeds),
                     tuple(fids[variant, p, ref][s] for s in seeds), sd, df)
            for variant, p, e, ref, seeds in found]


def _paired_rows(pairs: list[LeaveOneOut]) -> list[str]:
    """A table row per pair: its change, path / eval, the mean FID with and without it, the mean of the paired
    differences (without - with; each seed's too when there are several), twice its standard error, the seeds."""
    rows = []
    for pair in pairs:
        diffs = pair.diffs
        each = f" ({', '.join(f'{d:+.2f}' for d in diffs)})" if len(diffs) > 1 else ""
        noise = "—" if pair.two_se is None else f"{pair.two_se:.2f} ({pair.seed_df} df)"
        rows.append(f"| {pair.left_out} | {pair.label} | {statistics.mean(pair.with_it):.2f} | "
                    f"{statistics.mean(pair.without):.2f} | {statistics.mean(diffs):+.2f}{each} | {noise} | "
                    f"{len(pair.seeds)} |")
    return rows


_TWO_SE_WORDS = ("2 SE: twice the standard error of that mean, from the seed-to-seed standard deviation pooled over "
                 "this stage's variants with two or more seeds on the path / eval (its degrees of freedom in "
                 "brackets; — before any has two): a difference within it is no more than seed noise.")


def _pairs(spec, records: list[dict]) -> tuple[list[LeaveOneOut], list[LeaveOneOut], list[EvalPair]]:
    """(baseline_pairs, leave_one_out_pairs, eval_pairs): built once for a stage's tables and plots
    (write_results)."""
    return baseline_pairs(spec, records), leave_one_out_pairs(spec, records), eval_pairs(spec, records)


def _baseline_lines(spec, pairs: list[LeaveOneOut]) -> list[str]:
    """The table of baseline_pairs."""
    rows = _paired_rows(pairs)
    if not rows:
        return []
    left_out = spec.apart_from_baseline()
    apart = f" Left out (`against_baseline: false`): {', '.join(left_out)}." if left_out else ""
    return ["", f"Against the baseline ({spec.baseline}): each variant's FID gain over it, the baseline's FID minus "
                "the variant's, paired by training seed; positive: the variant is better. " + _TWO_SE_WORDS + apart,
            "",
            "| variant | path | variant's FID | baseline's FID | baseline - variant (each seed) | 2 SE | seeds |",
            "|---|---|---|---|---|---|---|", *rows]


def _leave_one_out_lines(pairs: list[LeaveOneOut]) -> list[str]:
    """The table of leave_one_out_pairs: the mean FID with and without each change, the mean of the paired
    differences (with each seed's when there are several) and twice its standard error from the pooled seed
    noise."""
    rows = _paired_rows(pairs)
    if not rows:
        return []
    return ["", "What each change of a combination adds (leave one out): the FID without it minus the "
                "combination's, paired by training seed; positive: the change helps on top of the others. "
            + _TWO_SE_WORDS, "",
            "| left out | path | with it | without it | without - with (each seed) | 2 SE | seeds |",
            "|---|---|---|---|---|---|---|", *rows]


def _eval_pair_lines(pairs: list[EvalPair]) -> list[str]:
    """The table of eval_pairs."""
    rows = _paired_rows(pairs)
    if not rows:
        return []
    return ["", "Against the reference evals (`eval_pairs`): each eval's FID against its reference eval's on the "
                "same trainings, the reference's minus the eval's, paired by training seed; positive: the eval is "
                "better. 2 SE: twice the standard error of that mean, from the standard deviation of a paired "
                "difference pooled over this file's eval pairs with two or more seeds (its degrees of freedom in "
                "brackets; — before any has two). Two evals of one training share its luck, so the seed-to-seed "
                "spread of FID would overstate this noise.", "",
            "| variant | path / eval vs reference | eval's FID | reference's FID | reference - eval (each seed) | 2 SE | "
            "seeds |",
            "|---|---|---|---|---|---|---|", *rows]


def _n_scores(n: int, older: bool = False) -> str:
    """"1 score", "3 scores"; with ``older``, "1 older score" (one written before a field was recorded)."""
    return f"{n} {'older ' if older else ''}score{'s' if n > 1 else ''}"


def _reference_words(ref: dict) -> str:
    n = ref.get("n_ref")
    return f"{ref.get('ref', '?')} ({'?' if n is None else n} images, {ref.get('inception', '?')})"


def _reference_text(records: list[dict], scorer: dict) -> str:
    """What the FIDs compare with: the running scorer's reference (``scorer``, empty under --report) or the one the
    score files record (``fid_ref``); each with its count when the score files name more than one, or one other
    than the scorer's (FIDs against different references do not compare)."""
    recorded = Counter(_reference_words(r["fid_ref"]) for r in records if r.get("fid_ref"))
    unknown = sum(not r.get("fid_ref") for r in records)
    current = _reference_words(scorer) if scorer else None
    if not recorded:
        return f"against {current}" if current else "against a reference the score files do not record"
    if len(recorded) == 1 and (current is None or current in recorded):
        older = f" ({_n_scores(unknown, older=True)} did not record it)" if unknown else ""
        return f"against {next(iter(recorded))}{older}"
    listing = "; ".join(f"{words} ({_n_scores(n)})" for words, n in sorted(recorded.items()))
    older = f"; {_n_scores(unknown, older=True)} without a record" if unknown else ""
    now = f", this command's: {current}" if current else ""
    return (f"against **more than one reference**: {listing}{older}{now}. FIDs against different references do "
            "not compare")


def _machine_lines(records: list[dict]) -> list[str]:
    """Where the scores were trained and sampled: one machine named, or a warning naming each with its count
    (a time budget buys a different number of steps on each: compare within one). Scores written before the
    machine was recorded are counted apart, not as another machine."""
    counts = Counter(r["machine"] for r in records if r.get("machine"))
    unknown = sum(not r.get("machine") for r in records)
    older = f" ({_n_scores(unknown, older=True)} did not record it)" if unknown else ""
    if not counts:
        return []
    if len(counts) == 1:
        return ["", f"Machine: {next(iter(counts))}{older}."]
    listing = ", ".join(f"{name} ({_n_scores(n)})" for name, n in sorted(counts.items()))
    return ["", f"**Scores from more than one machine**: {listing}{older}. A time budget buys a different number "
                "of steps on each; compare variants within one machine (the train steps column shows it)."]


def _command_override_lines(records: list[dict]) -> list[str]:
    """The recipe overrides the command line gave every variant (``ditlab ablate --set``, recorded in each score
    as ``command_overrides``): one line when all scores had the same, a warning naming each set with its count when
    they differ (the scores then compare different recipes), nothing when none had any. Scores written before
    they were recorded are counted apart."""
    sets = Counter(tuple(r["command_overrides"]) for r in records if "command_overrides" in r)
    unknown = sum("command_overrides" not in r for r in records)
    older = f" ({_n_scores(unknown, older=True)} did not record them)" if unknown else ""
    if not sets or list(sets) == [()]:
        return []

    def words(overrides: tuple) -> str:
        return " ".join(f"`{o}`" for o in overrides) or "none"

    if len(sets) == 1:
        return ["", f"Overrides from the command line (--set), on every variant: {words(next(iter(sets)))}{older}."]
    listing = "; ".join(f"{words(o)} ({_n_scores(n)})" for o, n in sorted(sets.items()))
    return ["", f"**Scores made with different command-line overrides (--set)**: {listing}{older}. Their rows "
                "compare different recipes."]


def _failures(out: Path, spec) -> list[tuple[str, str]]:
    """(unit name, error) of the units of ``spec`` recorded in OUT/failed/ (ditlab.experiments.ablation)."""
    names = {v.name for v in spec.variants}
    found = []
    for f in sorted((out / "failed").glob("*.json")):
        try:
            record = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if record.get("variant") in names:
            found.append((f.stem, str(record.get("error", "?")).splitlines()[0][:300]))
    return found


def _settings(s) -> str:
    guide = f"CFG {s.cfg_scale:g}" + (f" in ({s.cfg_interval[0]:g}, {s.cfg_interval[1]:g}]" if s.cfg_interval else "")
    shift = f" time shift {s.time_shift:g}" if getattr(s, "time_shift", 1.0) != 1.0 else ""
    if getattr(s, "ema_sigma_rel", 0.0):
        shift += f", post-hoc EMA sigma_rel {s.ema_sigma_rel:g}"
    return f"{s.sampler} {s.steps} steps" + (f" eta {s.eta:g}" if s.eta else "") + shift + f", {guide}"


def plot_curves(path: Path, records: list[dict], thresholds=()) -> Path:
    """FID during training against training seconds, one line per (variant, seed), one colour per variant, and a
    dotted line at each time-to-FID threshold (where a curve crosses one is the time the table gives)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    colours: dict[str, str] = {}
    seen = set()
    for r in records:
        key = (r["variant"], r["seed"])
        if not r.get("eval_curve") or key in seen:  # the curve is the run's: once per run, not per path/eval
            continue
        seen.add(key)
        first = r["variant"] not in colours  # one legend entry per variant
        colour = colours.setdefault(r["variant"], f"C{len(colours) % 10}")
        secs, fids = [c[0] for c in r["eval_curve"]], [c[2] for c in r["eval_curve"]]
        ax.plot(secs, fids, marker="o", ms=3, color=colour, label=r["variant"] if first else None)
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    for t in thresholds:
        if low <= t <= high:
            ax.axhline(t, color="grey", lw=0.8, ls=":")
            ax.annotate(f"FID {t:g}", (1.0, t), xycoords=("axes fraction", "data"), xytext=(-4, 2),
                        textcoords="offset points", ha="right", fontsize=7, color="grey")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 6, 8, 10 rather than 6x10^0 on a narrow log axis
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel("FID during training")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_results(path: Path, records: list[dict]) -> Path:
    """A bar per (variant, path / eval): the mean FID over the training seeds, their standard deviation as the
    error bar and each seed's value as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_by_pair(records)
    labels = [f"{v} / {p}" for v, p, _ in groups]
    means = [statistics.mean(r["fid"] for r in rs) for _, _, rs in groups]
    errs = [statistics.stdev([r["fid"] for r in rs]) if len(rs) > 1 else 0.0 for _, _, rs in groups]
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(labels), 1) + 1.2), constrained_layout=True)
    ax.barh(range(len(labels)), means, xerr=errs, color="tab:blue")
    # each training seed's own value: with two seeds a standard deviation says little, the two points more
    seeds = [(r["fid"], i) for i, (_, _, rs) in enumerate(groups) if len(rs) > 1 for r in rs]
    if seeds:
        ax.scatter(*zip(*seeds), color="black", s=12, zorder=3, label="each training seed")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("FID (lower is better)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# plot_paired's kinds: (a row's label, the x axis's label, the band's label)
_PAIR_PLOTS = {
    "leave_one_out": (lambda p: f"without {p.left_out} / {p.label}",
                      "FID without the change - FID with it (positive: the change helps)",
                      "± 2 SE (pooled seed noise)"),
    "baseline": (lambda p: f"{p.left_out} / {p.label}",
                 "baseline's FID - the variant's (positive: the variant is better)", "± 2 SE (pooled seed noise)"),
    "evals": (lambda p: f"{p.left_out} / {p.label}",
              "reference eval's FID - the eval's (positive: the eval is better)",
              "± 2 SE (pooled noise of a paired difference)"),
}


def plot_paired(path: Path, pairs: list[LeaveOneOut], kind: str = "leave_one_out") -> Path:
    """A row per pair: each training seed's paired difference as a point, their mean as a bar, zero as a line, and
    as a grey band plus or minus twice the mean's standard error (the pair's two_se, where known): a mean inside
    the band is no more than noise. ``kind``: leave_one_out (leave_one_out_pairs), baseline (baseline_pairs) or
    evals (eval_pairs), which label the rows and axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row_label, x_label, band_label = _PAIR_PLOTS[kind]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(pairs) + 1.8), constrained_layout=True)
    banded = False
    for row, pair in enumerate(pairs):
        band = pair.two_se
        if band:
            ax.barh(row, 2 * band, left=-band, height=0.7, color="0.88", zorder=1,
                    label=None if banded else band_label)
            banded = True
        ax.barh(row, statistics.mean(pair.diffs), height=0.35, color="tab:blue", zorder=2,
                label="mean" if row == 0 else None)
        ax.scatter(pair.diffs, [row] * len(pair.diffs), color="black", s=14, zorder=3,
                   label="each training seed" if row == 0 else None)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(range(len(pairs)), [row_label(p) for p in pairs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(x_label)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(out: Path, spec, scorer: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    records = read_scores(out, spec)
    baseline, leave_one_out, evals = pairs = _pairs(spec, records)
    paths = [write_csv(out / "results.csv", records, spec.time_to_fid),
             write_markdown(out / "results.md", spec, records, scorer, pairs)]
    if records:
        paths.append(plot_results(out / "results.png", records))
    if baseline:
        paths.append(plot_paired(out / "results_against_baseline.png", baseline, "baseline"))
    if leave_one_out:
        paths.append(plot_paired(out / "results_leave_one_out.png", leave_one_out))
    if evals:
        paths.append(plot_paired(out / "results_evals.png", evals, "evals"))
    if any(r.get("eval_curve") for r in records):
        paths.append(plot_curves(out / "results_curves.png", records, spec.time_to_fid))
    return paths

"""The ablation's tables, from the per-(variant, seed, path, eval) score files (score_records).

results.csv has one row per score; results.md a table of FID per (variant, path, eval), the mean over
training seeds with each seed's value when there are several, then the paired comparisons (pairs: each variant
against the baseline, each against the best, what each change of a combination adds, each eval against its
reference eval). Runs that
measured FID during training (budget eval_every) add time-to-FID columns (the training seconds at which the
in-training FID first reached each of the file's time_to_fid values; mean over the seeds that reached it).
write_results writes the tables and the plots (results_plots) of a folder.
"""
from __future__ import annotations

import csv
import json
import statistics
from collections import Counter
from pathlib import Path

from ditlab.experiments.pairs import (EvalPair, LeaveOneOut, baseline_pairs, best_pairs, eval_pairs,
                                      leave_one_out_pairs)
from ditlab.experiments.results_plots import plot_curves, plot_paired, plot_results
from ditlab.experiments.score_records import group_by_pair, read_scores, score_key

CSV_COLUMNS = ("variant", "seed", "path", "eval", "fid", "nfe", "sampler", "steps", "cfg_scale", "cfg_interval",
               "num_samples", "sample_seed", "train_steps", "train_images", "train_seconds", "params",
               "gflops_per_image", "task", "overrides", "command_overrides", "machine", "note")
LIST_COLUMNS = ("overrides", "command_overrides")  # written space-separated, as on a command line
NOT_MEASURED = "n/a"  # time to FID of a score that FID during training did not measure (another eval or path)


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


def _schedule_caveat(records: list[dict]) -> str:
    """A time to FID read off a run whose learning rate decays over its whole budget is that schedule's: at 420 s
    of a 900-s cosine run the rate is still high, and a run whose budget ends at 420 s (its rate decayed by then)
    usually scores better there. Without this a reader takes the curve for the budget each quality needs."""
    decays = sorted({r["lr_decay"] for r in records if r.get("eval_curve") and r.get("lr_decay", "constant")
                     != "constant"})
    if not decays:
        return ""
    return (f" These times are of this run's schedule: its learning rate decays over its whole budget (optim.decay: "
            f"{', '.join(decays)}), so a run whose budget ends at one of these times has decayed its rate by then "
            "and can score better there.")


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
                   pairs: tuple[list, list, list, list] | None = None) -> Path:
    """results.md; ``pairs``: (baseline_pairs, best_pairs, leave_one_out_pairs, eval_pairs) where the caller has
    built them for its plots too (write_results), else built here."""
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
    lines += _own_ema_lines(path.parent, records)
    lines += _machine_lines(records)
    lines += _command_override_lines(records)
    times = [f"{x:g}" for x in spec.time_to_fid] if any(r.get("eval_curve") for r in records) else []
    if times:
        lines += ["", f"Time to FID: training seconds (evaluation excluded) until the FID of {b.eval_num} samples "
                      f"measured every {b.eval_every} steps during training{_curve_settings(spec, records)} first "
                      "reached the value: between the evaluation before and that one (≤: at the first "
                      f"evaluation); — never; {NOT_MEASURED}: a score with other settings than those."
                      + _schedule_caveat(records)]
    head = ["variant", "path", "FID", "NFE", *[f"s to FID {t}" for t in times], "train steps", "train images",
            "params (M)", "GFLOPs/img", "note"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, p, rs in group_by_pair(records):
        r = rs[0]
        cells = [variant, p, _fmt_fid(rs), str(r["nfe"]), *[_fmt_time(rs, t) for t in times], _fmt_count(rs, "train_steps"),
                 _fmt_count(rs, "train_images"), f"{r['params'] / 1e6:.2f}", f"{r['gflops_per_image']:.2f}", r.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _posthoc_fit_lines(records)
    baseline, best, leave_one_out, evals = pairs if pairs is not None else _pairs(spec, records)
    lines += _baseline_lines(spec, baseline)
    lines += _best_lines(best)
    lines += _leave_one_out_lines(leave_one_out)
    lines += _eval_pair_lines(evals)
    missing = [(v.name, p, e) for v in spec.variants for p, e, _ in spec.scores_of(v)
               if not any(score_key(r) == (v.name, p, e) for r in records)]
    if missing:
        lines += ["", f"Not scored yet: {', '.join(f'{v}/{p}' + (f'/{e}' if e else '') for v, p, e in missing)}."]
    failed = _failures(path.parent, spec)
    if failed:
        lines += ["", "Failed (failed/UNIT.json has the traceback; tried again last by the next invocation): "
                  + "; ".join(f"{name}: {error}" for name, error in failed) + "."]
    path.write_text("\n".join(lines) + "\n")
    return path


def _paired_rows(pairs: list[LeaveOneOut]) -> list[str]:
    """A table row per pair: its change, path / eval, the mean FID with and without it, the mean of the paired
    differences (without - with; each seed's too when there are several), twice its standard error, the 95%
    interval by Student's t, the seeds."""
    rows = []
    for pair in pairs:
        diffs = pair.diffs
        each = f" ({', '.join(f'{d:+.2f}' for d in diffs)})" if len(diffs) > 1 else ""
        noise = "—" if pair.two_se is None else f"{pair.two_se:.2f} ({pair.seed_df} df)"
        ci = "—" if pair.ci95 is None else f"{pair.ci95:.2f}"
        rows.append(f"| {pair.left_out} | {pair.label} | {statistics.mean(pair.with_it):.2f} | "
                    f"{statistics.mean(pair.without):.2f} | {statistics.mean(diffs):+.2f}{each} | {noise} | {ci} | "
                    f"{len(pair.seeds)} |")
    return rows


def _paired_table(caption: str, columns: tuple[str, str, str, str, str], pairs: list[LeaveOneOut]) -> list[str]:
    """A paired table of results.md: its caption, a header of ``columns`` (who, where, the two mean FIDs, their
    difference) followed by the noise columns every paired table shares, and _paired_rows; nothing without
    pairs."""
    rows = _paired_rows(pairs)
    if not rows:
        return []
    head = [*columns, "2 SE", "95% (t)", "seeds"]
    return ["", caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows]


_CI_WORDS = ("95% (t): the half-width of that mean's 95% interval, its standard error times Student's t on those "
             "degrees of freedom; with few of them it is wider than 2 SE (1 df: 6.4 times, 3 df: 1.6, 5 df: 1.3): a "
             "difference within it is no more than seed noise.")
_TWO_SE_WORDS = ("2 SE: twice the standard error of that mean, from the seed-to-seed standard deviation pooled over "
                 "this stage's variants with two or more seeds on the path / eval (its degrees of freedom in "
                 "brackets; — before any has two). " + _CI_WORDS)


def _pairs(spec, records: list[dict]) -> tuple[list[LeaveOneOut], list[LeaveOneOut], list[LeaveOneOut],
                                               list[EvalPair]]:
    """(baseline_pairs, best_pairs, leave_one_out_pairs, eval_pairs): built once for a stage's tables and plots
    (write_results)."""
    return (baseline_pairs(spec, records), best_pairs(spec, records), leave_one_out_pairs(spec, records),
            eval_pairs(spec, records))


def _baseline_lines(spec, pairs: list[LeaveOneOut]) -> list[str]:
    """The table of baseline_pairs."""
    left_out = spec.apart_from_baseline()
    apart = f" Left out (`against_baseline: false`): {', '.join(left_out)}." if left_out else ""
    return _paired_table(
        f"Against the baseline ({spec.baseline}): each variant's FID gain over it, the baseline's FID minus the "
        "variant's, paired by training seed; positive: the variant is better. " + _TWO_SE_WORDS + apart,
        ("variant", "path", "variant's FID", "baseline's FID", "baseline - variant (each seed)"), pairs)


def _best_lines(pairs: list[LeaveOneOut]) -> list[str]:
    """The table of best_pairs: is each path / eval's leader clear of the others?"""
    return _paired_table(
        "Against the best (on each path / eval, the variant with the lowest mean FID over two or more seeds, when it "
        "is not the baseline): each other variant's FID minus the best's, paired by training seed (the baseline's "
        "pair and a best combination's leave-one-out pairs have tables of their own); positive: the best is "
        "ahead. " + _TWO_SE_WORDS,
        ("variant", "path: best", "best's FID", "variant's FID", "variant - best (each seed)"), pairs)


def _leave_one_out_lines(pairs: list[LeaveOneOut]) -> list[str]:
    """The table of leave_one_out_pairs: the mean FID with and without each change, the mean of the paired
    differences (with each seed's when there are several) and twice its standard error from the pooled seed
    noise."""
    return _paired_table(
        "What each change of a combination adds (leave one out): the FID without it minus the combination's, "
        "paired by training seed; positive: the change helps on top of the others. " + _TWO_SE_WORDS,
        ("left out", "path", "with it", "without it", "without - with (each seed)"), pairs)


def _eval_pair_lines(pairs: list[EvalPair]) -> list[str]:
    """The table of eval_pairs."""
    return _paired_table(
        "Against the reference evals (`eval_pairs`): each eval's FID against its reference eval's on the same "
        "trainings, the reference's minus the eval's, paired by training seed; positive: the eval is better. 2 SE: "
        "twice the standard error of that mean, from the standard deviation of a paired difference pooled over the "
        "variants with this eval pair on two or more seeds (its degrees of freedom in brackets; — before any has "
        "two); other evals' pairs do not enter it. Two evals of one training share its luck, so the seed-to-seed "
        "spread of FID would overstate this noise. " + _CI_WORDS,
        ("variant", "path / eval vs reference", "eval's FID", "reference's FID", "reference - eval (each seed)"),
        pairs)


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


def _posthoc_fit_lines(records: list[dict]) -> list[str]:
    """A warning naming the post-hoc EMA scores whose width the run's snapshots shaped poorly (a relative profile
    fit error over FIT_WARNING, recorded as ``posthoc_fit_error``): their FID is of an approximation of that EMA,
    more so the larger the error. Scores written before the error was recorded are not named."""
    from ditlab.train.posthoc_ema import FIT_WARNING

    poor = [r for r in records if r.get("posthoc_fit_error", 0.0) > FIT_WARNING]
    if not poor:
        return []
    listing = ", ".join(f"{r['variant']}-s{r['seed']} / {r['eval']} ({r['posthoc_fit_error']:.1%})" for r in poor)
    return ["", f"**Post-hoc EMA widths the snapshots shape poorly** (relative profile fit error over "
                f"{FIT_WARNING:.0%}): {listing}. Each is the FID of an approximation of that EMA; more snapshot steps "
                "(`ema.posthoc_every`) or a tracked width nearer it fit better."]


def _own_ema_lines(out: Path, records: list[dict]) -> list[str]:
    """Beside post-hoc EMA evals, the width of each of those runs' own EMA (what their other evals sample) on the
    same scale: ema.sigma_rel, or for the exponential ema.decay its width at the run's last step
    (ditlab.train.ema.classic_sigma_rel), read from the run's saved config. Runs whose config is not in the folder
    (an archive without it) are left out."""
    from ditlab.config import read_saved_config
    from ditlab.train.ema import classic_sigma_rel

    steps = {(r["variant"], r["seed"]): int(r["train_steps"]) for r in records
             if r.get("ema_sigma_rel") and r.get("train_steps")}  # the runs a post-hoc eval scored
    widths = []
    for (variant, seed), n in sorted(steps.items()):
        unit = f"{variant}-s{seed}"
        saved = out / "runs" / unit / "config.yaml"
        if not saved.is_file():
            continue
        ema = read_saved_config(saved).ema
        if ema.sigma_rel:
            widths.append(f"{unit}: ema.sigma_rel {ema.sigma_rel:g}")
        else:
            width = classic_sigma_rel(ema.decay, n, ema.warmup, ema.every)
            widths.append(f"{unit}: ema.decay {ema.decay:g} at {n:,} steps is {width:.3f}")
    if not widths:
        return []
    return ["", "The runs' own EMA, which their evals without a post-hoc width sample, on the post-hoc scale "
                "(sigma_rel): " + "; ".join(widths) + "."]


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


def write_results(out: Path, spec, scorer: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    records = read_scores(out, spec)
    baseline, _, leave_one_out, evals = pairs = _pairs(spec, records)
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

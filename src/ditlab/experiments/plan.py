"""``ditlab ablate FILE --out DIR --plan``: what an ablation has done and what is left, without running anything.

A study spread over many device sessions needs to know, before a machine is taken, how much work is left:
per stage (or for the whole file without stages), the runs trained, the runs trained but not fully scored,
the runs still to train with their training budget, and the scores left. A later stage whose ranking is not
known yet (the stage before it is incomplete) is shown with the most runs it can take, and whom it would take
if the stage before it ended now (its ranking so far, the kept variants, the combination).

Once some scores carry their timings (``train_wall_seconds``, ``sample_seconds``, ``fid_seconds``), the total
also estimates the device time left at the rates measured so far: per run to train its time limit plus the
median set-up (wall minus timed training) and its FID evaluations during training (train.eval_every, at the
variant's measured steps per second), per score its samples' network passes (NFE, doubled by guidance) and
FID, and per network scored its loading and its sampler's compilation (ditlab.experiments.timings). The rates
are those of the machine that measured them.
The stage being worked on also lists its next units in the runner's order with each one's seconds.
"""
from __future__ import annotations

from pathlib import Path

from ditlab.experiments.ablation_spec import AblationSpec, Stage, Variant
from ditlab.experiments.timings import describe_rates, folder_rates, scores_s, training_eval_s


def _budget(b) -> str:
    return f"{b.time_limit:g} s" if b.time_limit else f"{b.steps} steps"


def _units(spec: AblationSpec, out: Path, rates: dict | None = None, carried: frozenset = frozenset()):
    """Per (variant, seed) unit of a plain ablation in ``out``, in the runner's order: (name, scores owed, scores
    missing, trained, device seconds left at ``rates`` or 0). A score in ``carried`` (to be taken from the stage
    before) counts as written."""
    from ditlab.experiments.ablation import order_variants, score_path

    for seed in spec.seeds:
        for v in order_variants(spec.variants):
            name = f"{v.name}-s{seed}"
            owed = list(spec.scores_of(v))  # (path, eval, sample settings)
            missing = [sample for p, e, sample in owed
                       if (f := score_path(out, name, p, e)) not in carried and not f.exists()]
            # a unit with every score is done, also where its run is not here (a restored study holds scores)
            trained = (out / "runs" / name / "summary.json").exists() or not missing
            seconds = 0.0
            if rates and missing:
                to_score = missing
                if not trained:  # a restored study has no runs: its unscored units are trained again, all scores
                    b = spec.budget
                    # a new network's set-up: a session's machine starts with an empty compile cache
                    seconds += b.time_limit + rates["setup_s"] + training_eval_s(
                        rates, v.name, b.time_limit, b.steps, b.eval_every, b.eval_num, spec.evals_of(v)[0][1])
                    to_score = [sample for _, _, sample in owed]
                seconds += scores_s(rates, [sample or spec.sample for sample in to_score])
            yield name, owed, missing, trained, seconds


def _count(spec: AblationSpec, out: Path, rates: dict | None = None, carried: frozenset = frozenset()) -> dict:
    """Runs and scores of a plain ablation in ``out``, and (with ``rates``) the device seconds left; a score in
    ``carried`` (to be taken from the stage before) counts as written."""
    from ditlab.experiments.ablation import failure_path

    counts = {"runs": 0, "trained": 0, "partly_scored": 0, "to_train": 0, "scores": 0, "scored": 0, "failed": 0,
              "left_s": 0.0}
    for name, owed, missing, trained, seconds in _units(spec, out, rates, carried):
        counts["runs"] += 1
        counts["scores"] += len(owed)
        counts["scored"] += len(owed) - len(missing)
        counts["trained"] += trained
        counts["to_train"] += not trained
        counts["partly_scored"] += trained and bool(missing)
        counts["failed"] += bool(missing) and failure_path(out, name).exists()
        counts["left_s"] += seconds
    return counts


def _block(title: str, spec: AblationSpec, out: Path, rates: dict | None,
           carried: frozenset = frozenset()) -> tuple[list[str], dict]:
    c = _count(spec, out, rates, carried)
    samples = {s.num for _, s in (spec.evals or {"": spec.sample}).items()}
    line = (f"{title}: {_budget(spec.budget)} per run, seeds {spec.seeds}, {len(spec.variants)} variants -> "
            f"{c['runs']} runs: {c['trained']} trained ({c['partly_scored']} with scores left), {c['to_train']} to "
            f"train; scores {c['scored']}/{c['scores']} (FID-{'/'.join(str(n) for n in sorted(samples))}) "
            f"in {out}" + (f"; {c['failed']} failed (see {out / 'failed'})" if c["failed"] else ""))
    return [line], c


def describe_plan(spec: AblationSpec, out, only: list[str] = (), rates_from: dict | None = None,
                  stage_name: str | None = None, seeds: list[int] = ()) -> list[str]:
    """Lines describing the study in ``out``: one per stage (or one for a file without stages) and a total.
    ``only``, ``stage_name`` and ``seeds`` (--only, --stage, --seeds) mean what they mean to the runner
    (ditlab.experiments.stages): the plan of the command that runs with them; it stops at that stage."""
    import dataclasses

    from ditlab.experiments.ablation import check_variants
    from ditlab.experiments.build_check import DataFacts
    from ditlab.experiments.promotion import promoted
    from ditlab.experiments.stages import (carried_scores, check_first_only, check_only_in_stage, check_stage_name,
                                           check_stage_seeds, ranking, stage_complete, stage_spec)

    out = Path(out)
    check_variants(spec, [])  # the default paths, and a bad variant named before anything else
    # the whole study's rates (--rates-from filling what it has not measured): a file without stages is judged by
    # them and the total names them; each stage's units are judged as the runner judges them (folder_rates)
    rates = folder_rates(out, rates_from)
    names = check_stage_name(spec, stage_name)
    if seeds and not spec.stages:
        spec = dataclasses.replace(spec, seeds=list(seeds))
    elif spec.stages:
        check_stage_seeds(seeds, stage_name)
    first_only = check_first_only(spec, only, stage_name)  # the runner's check of the names
    variants: list[Variant] | None = [v for v in spec.variants if not first_only or v.name in first_only]
    if not spec.stages:
        plain = _with(spec, variants)
        lines, c = _block("ablation", plain, out, rates)
        lines += _next_units(plain, out, rates) if rates else []
        return lines + [_total([(c, spec.budget.time_limit)], rates)]
    lines, totals = [], []
    for i, stage in enumerate(spec.stages):
        if stage_name is not None and i > names.index(stage_name):
            break
        preview, carried = "", frozenset()
        if i > 0 and variants is not None:
            prev = spec.stages[i - 1]
            prev_spec = stage_spec(spec, prev, variants)
            ranked = ranking(prev_spec, out / prev.name, stage.rank_by)
            facts = DataFacts(out)  # facts of trained runs only: --plan reads no data
            if stage_complete(prev_spec, out / prev.name):
                variants = promoted(spec, stage, ranked, prev_spec.variants, facts)
                carried = frozenset(dst for _, dst in carried_scores(
                    prev_spec, out / prev.name, stage_spec(spec, stage, variants), out / stage.name))
            else:
                preview = _preview(spec, stage, ranked, prev_spec, facts)
                variants = None
        if variants is None and only and stage.name == stage_name:
            raise ValueError(f"--stage {stage_name} --only {only[0]}: stage {stage_name}'s variants are not known "
                             f"until stage {spec.stages[i - 1].name} is complete")
        # the runner's rates for this stage's units: its own folder's, else the whole study's (folder_rates)
        stage_rates = folder_rates(out / stage.name, rates_from, study=out)
        if variants is None:  # its variants depend on a ranking not known yet
            one = _one_run(spec, stage, ranked, prev_spec, out, stage_rates) if preview and stage_rates else ""
            lines.append(f"stage {stage.name}: {_budget(stage.budget)} per run, seeds {stage.seeds}: waits for the "
                         f"stage before it; at most {_most(stage, spec)} variants x {len(stage.seeds)} seeds"
                         + preview + one)
            continue
        plain = stage_spec(spec, stage, variants)
        if seeds and stage.name == stage_name:  # --stage NAME --seeds S: its units on these seeds
            plain = dataclasses.replace(plain, seeds=list(seeds))
        if i > 0 and only and stage.name == stage_name:  # the runner does only these units of the stage
            plain = _with(plain, [v for v in plain.variants if v.name in check_only_in_stage(plain, stage, only)])
        block, c = _block(f"stage {stage.name}", plain, out / stage.name, stage_rates, carried)
        lines += block
        if stage_rates and not any(t[0]["scores"] > t[0]["scored"] for t in totals):  # the stage the runner works on
            lines += _next_units(plain, out / stage.name, stage_rates, carried)
        totals.append((c, stage.budget.time_limit))
    return lines + [_total(totals, rates)]


def _next_units(spec: AblationSpec, out: Path, rates: dict, carried: frozenset = frozenset(),
                most: int = 8) -> list[str]:
    """The next units in the runner's order with the seconds each should take at the measured rates (training
    and set-up where its run is not here, then its missing scores): what a device session of S seconds can hold,
    and what --machine-left-s will judge."""
    units = [f"{name} ~{seconds:.0f} s" for name, _, missing, _, seconds in _units(spec, out, rates, carried)
             if missing]
    if not units:
        return []
    more = f" and {len(units) - most} more" if len(units) > most else ""
    return [f"  next units, in the runner's order, at the measured rates: {', '.join(units[:most])}{more}"]


def _one_run(spec: AblationSpec, stage: Stage, ranked: list, prev_spec: AblationSpec, out: Path,
             rates: dict) -> str:
    """For a waiting stage: the device seconds of one of its runs at the measured rates (training, set-up, FID
    during training, its scores), for the variant ranked first so far: whether a device session can hold it."""
    from ditlab.experiments.stages import stage_spec

    best = next((v for v in prev_spec.variants if v.name == ranked[0][0]), None)
    if best is None:
        return ""
    plain = stage_spec(spec, stage, [best])
    unit = f"{best.name}-s{plain.seeds[0]}"  # its first seed's unit (a cascade's low-resolution run is another)
    seconds = next((s for name, _, _, _, s in _units(plain, out / stage.name, rates) if name == unit), 0.0)
    return f"; a run of {best.name} ~{seconds:.0f} s at the measured rates" if seconds else ""


def _preview(spec: AblationSpec, stage: Stage, ranked: list, prev_spec: AblationSpec, facts) -> str:
    """Whom ``stage`` would take if the stage before it ended now: the ranking of its variants scored so far
    (a study spread over sessions wants to know where it is heading before the last unit is scored)."""
    from ditlab.experiments.promotion import promoted

    if not ranked:
        return ""
    chosen = {v.name: v for v in promoted(spec, stage, ranked, prev_spec.variants, facts)}
    fid = {name: f for name, f, _ in ranked}
    parts = [f"{name} ({fid[name]:.2f})" for name, _, _ in ranked if name in chosen]  # best first
    in_file = {v.name for v in spec.variants}
    new = [v for v in chosen.values() if v.name not in fid]
    parts += [v.name for v in new if v.name in in_file]  # kept, not ranked yet
    parts += [f"{v.name} ({v.note})" for v in new if v.name not in in_file]  # the combination, stacks, on the best
    return (f"; with the {len(ranked)} of {len(prev_spec.variants)} variants ranked so far it would take "
            f"{', '.join(parts)}")


def _with(spec: AblationSpec, variants: list[Variant]) -> AblationSpec:
    """``spec`` with ``variants`` and the low-resolution variants their cascades train first (as the runner)."""
    import dataclasses

    names = {v.name for v in variants}
    needed = {v.lo_variant for v in variants if v.lo_variant}
    return dataclasses.replace(spec, variants=[v for v in spec.variants if v.name in names | needed])


def _most(stage: Stage, spec: AblationSpec) -> int:
    return (min(len(spec.variants), (stage.top or len(spec.variants)) + len(stage.keep)) + bool(stage.combine)
            + (stage.combine if stage.leave_one_out else 0) + stage.stack)


def _total(parts: list[tuple[dict, float]], rates: dict | None = None) -> str:
    runs = sum(c["to_train"] for c, _ in parts)
    seconds = sum(c["to_train"] * limit for c, limit in parts)
    scores = sum(c["scores"] - c["scored"] for c, _ in parts)
    timed = f" ({seconds / 60:.0f} min of timed training, plus set-up per run)" if seconds else ""
    line = f"left in the known stages: {runs} trainings{timed}, {scores} scores"
    if rates and (runs or scores):
        left = sum(c["left_s"] for c, _ in parts)
        about = f"{left:.0f} s" if left < 120 else f"{left / 60:.0f} min"
        where = "so far"
        if rates.get("filled"):
            where += f", with {', '.join(rates['filled'])} from {rates['source']} (--rates-from)"
        elif rates.get("source"):
            where = f"under {rates['source']} (--rates-from)"
        line += (f"; about {about} of device time at the rates of the {rates['scores']} timed scores "
                 f"{where} ({describe_rates(rates)}), on the machine that measured them")
    return line

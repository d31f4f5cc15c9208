"""Staged ablations: every variant on a short screening budget, then the best ones on the full budget.

A file with ``stages:`` (ditlab.experiments.ablation_spec) is run stage by stage. Each stage is a plain
ablation of its own (its budget and seeds, a subset of the variants) in OUT/STAGE, with the usual runs,
scores, grids and results, so the sequential and the multi-GPU runners do the work unchanged. The first
stage takes every variant (or those of --only; with --stage LATER, --only names that stage's own variants
instead: check_only_in_stage); a later one the ``top`` best of the stage before it, by the
mean over seeds of the FID on ``rank_by`` (the best path of a variant counts), plus ``keep``, the variants made
from them (ditlab.experiments.promotion: a combination, stacks and kept changes on the best) and the
low-resolution variants their cascades need. A stage whose budget, seeds and sample settings equal the stage
before's takes that stage's scores of whole units instead of training them again. OUT/stages.md lists each
stage's ranking and who went on.

A stage starts only when the stage before it is complete (every score written); --budget-s counts across
the stages of one invocation, and exit code 3 means "run the same command again".
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from ditlab.experiments.ablation_spec import AblationSpec, Stage, Variant, check_stage_evals
from ditlab.experiments.build_check import DataFacts
from ditlab.experiments.promotion import promoted
from ditlab.experiments.score_records import read_scores

EXIT_MORE_TO_DO = 3


def stage_spec(spec: AblationSpec, stage: Stage, variants: list[Variant]) -> AblationSpec:
    """The plain ablation a stage runs: its budget, seeds and variants (less its ``skip``); sample.num and every
    eval's num from the stage when it sets one; only the stage's evals when it names some (each variant keeps
    those of its own evals that the stage scores; one left with none is an error naming both)."""
    sample, evals = spec.sample, spec.evals
    variants = [v for v in variants if v.name not in stage.skip]
    names = {v.name for v in variants}
    # A variant's lo_variant must be in the stage's list (its run generates the cascade's low resolution).
    variants = variants + [v for v in spec.variants if v.name not in names
                           and any(x.lo_variant == v.name for x in variants)]
    if stage.evals:  # the variants stay as they are (the next stage promotes them): AblationSpec.evals_of narrows
        evals = {k: e for k, e in evals.items() if k in stage.evals}
        check_stage_evals(stage, variants)  # (a combination is checked here; the file's variants at load)
    if stage.num:
        sample = dataclasses.replace(sample, num=stage.num)
        evals = {k: dataclasses.replace(e, num=stage.num) for k, e in evals.items()}
    order = {v.name: i for i, v in enumerate(spec.variants)}  # a combination (not in the file) comes last
    return dataclasses.replace(spec, budget=stage.budget, seeds=list(stage.seeds), sample=sample, evals=evals,
                               variants=sorted(variants, key=lambda v: order.get(v.name, len(order))), stages=[])


def ranking(spec: AblationSpec, out: Path, rank_by: str) -> list[tuple[str, float, int]]:
    """[(variant, FID, seeds)] of a finished stage, best first: per variant the best path's mean FID over
    seeds on the eval ``rank_by`` ("" = the first eval)."""
    eval_name = rank_by or next(iter(spec.evals), "")
    by_pair: dict[tuple[str, str], list[float]] = {}
    for r in read_scores(out, spec):
        if r.get("eval", "") == eval_name:
            by_pair.setdefault((r["variant"], r["path"]), []).append(r["fid"])
    best: dict[str, tuple[float, int]] = {}
    for (variant, _), fids in by_pair.items():
        mean = statistics.mean(fids)
        if variant not in best or mean < best[variant][0]:
            best[variant] = (mean, len(fids))
    return sorted(((v, f, n) for v, (f, n) in best.items()), key=lambda x: x[1])


def carried_scores(prev: AblationSpec, prev_out: Path, spec: AblationSpec, out: Path) -> list[tuple[Path, Path]]:
    """(score file of the stage before, the same score's file in this stage) for every score this stage owes
    that the stage before already has with the same training and sampling: the same budget, the variant's
    overrides and paths, the training seed and the eval's sample settings (a second round at the first's
    budget takes its variants' scores instead of training them again). Only those not in ``out`` yet, and only
    for a (variant, seed) whose every score can be had so: a unit's scores come from one training, and the runner
    trains a unit with a score missing again and drops its other scores."""
    from ditlab.experiments.ablation import score_path

    if prev.budget != spec.budget:
        return []
    before = {v.name: v for v in prev.variants}
    pairs = []
    for v in spec.variants:
        old = before.get(v.name)
        if old is None or old.overrides != v.overrides or old.paths != v.paths:
            continue
        settings = dict(prev.evals_of(old))
        for seed in sorted(set(spec.seeds) & set(prev.seeds)):
            unit = [(score_path(prev_out, f"{v.name}-s{seed}", path, e), score_path(out, f"{v.name}-s{seed}", path, e),
                     settings.get(e) == sample) for path, e, sample in spec.scores_of(v)]
            if any(dst.exists() for _, dst, _ in unit):  # scored here (or carried before): not mixed with others
                continue
            if all(same and src.exists() for src, _, same in unit):
                pairs += [(src, dst) for src, dst, _ in unit]
    return pairs


def carry_scores(pairs: list[tuple[Path, Path]], from_stage: str) -> None:
    """Write each carried score into this stage, marked with the stage it was measured in (the device-time
    rates count each measurement once: ditlab.experiments.timings)."""
    import json

    from ditlab.experiments.ablation import write_json_atomic

    for src, dst in pairs:
        write_json_atomic(dst, {**json.loads(src.read_text()), "carried_from": from_stage})


def stage_complete(spec: AblationSpec, out: Path) -> bool:
    """Every (variant, seed, path, eval) of the stage's plain ablation has its score file."""
    from ditlab.experiments.ablation import score_path

    return all(score_path(out, f"{v.name}-s{seed}", p, e).exists()
               for seed in spec.seeds for v in spec.variants for p, e, _ in spec.scores_of(v))


def run_stages(spec: AblationSpec, out, run_stage: Callable[[AblationSpec, Path, float, Sequence[str]], int],
               budget_s: float = 0.0, only: list[str] = (), stage_name: Optional[str] = None,
               log: Callable[[str], None] = print, overrides: Sequence[str] = (), load_data: bool = True,
               seeds: Sequence[int] = ()) -> int:
    """Run the stages in order (or only ``stage_name``); ``run_stage(plain_spec, folder, budget_s, only)`` does
    one stage's work (only those variants' units, when some are named) and returns 0, EXIT_MORE_TO_DO or 1
    (units failed: the next stage waits for them). Returns 0 when the last stage asked for is complete (under
    --stage LATER --only, its named units).
    ``overrides``: the command line's overrides of every variant (--set), for checking a combination;
    ``load_data``: read the training data to check it when no trained run recorded its facts (False: --report);
    ``seeds`` (--seeds, only with ``stage_name``): that stage's units take these training seeds instead of its own,
    as --seeds does for a file without stages (a third seed for a close pair); its tables keep every seed's
    scores, and a later stage ranks it by them all."""
    from ditlab.experiments.ablation import check_variants

    out = Path(out)
    names = check_stage_name(spec, stage_name)
    check_stage_seeds(seeds, stage_name)
    first_only = check_first_only(spec, only, stage_name)
    check_variants(spec, [])  # fills in default paths, fails early on a bad variant
    facts = DataFacts(out, load_data=load_data)  # a combination's network is built before it trains
    start = time.monotonic()
    lines = [f"# Stages of {spec.source.name}", ""]
    variants = [v for v in spec.variants if not first_only or v.name in first_only]
    code = 0
    for i, stage in enumerate(spec.stages):
        if stage_name is not None and i > names.index(stage_name):
            break
        folder = out / stage.name
        if i > 0:
            prev = spec.stages[i - 1]
            prev_spec = stage_spec(spec, prev, variants)
            if not stage_complete(prev_spec, out / prev.name):
                if stage_name is not None:
                    raise ValueError(f"--stage {stage_name}: stage {prev.name} is not complete yet "
                                     f"({out / prev.name}); run it first")
                code = EXIT_MORE_TO_DO
                break
            ranked = ranking(prev_spec, out / prev.name, stage.rank_by)
            not_stacked: list[str] = []
            variants = promoted(spec, stage, ranked, prev_spec.variants, facts, overrides, not_stacked)
            lines += _ranking_lines(prev, stage, ranked, variants, not_stacked)
            _write_stages(out, spec, lines)  # now: a stage can run for many device commands
        plain = stage_spec(spec, stage, variants)
        if stage_name is not None and stage.name != stage_name:
            continue  # an earlier stage: only its ranking is needed
        if seeds and stage.name == stage_name:  # --stage NAME --seeds S: its units on these seeds
            plain = dataclasses.replace(plain, seeds=list(seeds))
        # --stage LATER --only V: the runner does only V's units of this stage (its results table keeps them all)
        stage_only = check_only_in_stage(plain, stage, only) if i > 0 and stage.name == stage_name else ()
        if i > 0:
            carried = carried_scores(prev_spec, out / prev.name, plain, folder)
            if carried:
                carry_scores(carried, prev.name)
                log(f"ditlab ablate: stage {stage.name} takes {len(carried)} scores of the same budget from "
                    f"{prev.name}")
        left = 0.0
        if budget_s > 0:
            left = budget_s - (time.monotonic() - start)
            if left <= 0:
                log(f"ditlab ablate: stage {stage.name} not started: --budget-s is used up; the next command "
                    "starts it")
                code = EXIT_MORE_TO_DO
                break
        log(f"ditlab ablate: stage {stage.name} ({len(plain.variants)} variants x {len(plain.seeds)} seeds, "
            f"{_budget_text(stage)}) in {folder}" + (f"; only {', '.join(stage_only)}" if stage_only else ""))
        code = run_stage(plain, folder, left, stage_only)
        if code:
            break
    _write_stages(out, spec, lines)
    return code


def check_stage_name(spec: AblationSpec, stage_name: Optional[str]) -> list[str]:
    """The file's stage names, once --stage's name (if given) is known to be one of them."""
    names = [s.name for s in spec.stages]
    if stage_name is not None and stage_name not in names:
        raise ValueError(f"--stage {stage_name}: no such stage; the file has {', '.join(names)}")
    return names


def check_stage_seeds(seeds: Sequence[int], stage_name: Optional[str]) -> None:
    """--seeds in a file with stages applies to --stage's stage only: refused without it."""
    if seeds and stage_name is None:
        raise ValueError(f"--seeds {' '.join(map(str, seeds))}: a file with stages names each stage's seeds; "
                         "name the stage whose units take these instead with --stage NAME")


def check_first_only(spec: AblationSpec, only: Sequence[str], stage_name: Optional[str]) -> Sequence[str]:
    """The --only names that filter the first stage (the whole study follows from its ranking): all of them
    unless --stage names a later stage, whose own variants they then name (check_only_in_stage). Each must be a
    variant of the file."""
    if stage_name is not None and spec.stages and stage_name != spec.stages[0].name:
        return ()
    known = {v.name for v in spec.variants}
    for name in only:
        if name not in known:
            later = (" (a variant a later stage makes, e.g. a combination, is named with --stage STAGE --only "
                     "NAME)" if len(spec.stages) > 1 else "")
            raise ValueError(f"--only {name}: no such variant; the file has {sorted(known)}{later}")
    return only


def check_only_in_stage(plain: AblationSpec, stage: Stage, only: Sequence[str]) -> Sequence[str]:
    """The --only names of a later stage (--stage LATER): each must be among the variants that stage took from
    the ranking before it, its combination, stacks and kept variants included (``plain``: stage_spec's). E.g. a
    session that can hold only some of a final stage's units runs first the ones a decision waits for."""
    names = {v.name for v in plain.variants}
    for name in only:
        if name not in names:
            raise ValueError(f"--stage {stage.name} --only {name}: stage {stage.name} has no such variant; it has "
                             f"{sorted(names)}")
    return only


def _write_stages(out: Path, spec: AblationSpec, lines: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "stages.md").write_text("\n".join(lines + _stage_table(spec)) + "\n")


def _budget_text(stage: Stage) -> str:
    b = stage.budget
    text = f"{b.time_limit:g} s" if b.time_limit else f"{b.steps} steps"
    return text + (f", FID-{b.eval_num} every {b.eval_every} steps" if b.eval_every else "")


def _ranking_lines(prev: Stage, stage: Stage, ranked, chosen: list[Variant], not_stacked: list[str]) -> list[str]:
    taken = {v.name for v in chosen}
    made = [v for v in chosen if v.name not in {name for name, _, _ in ranked} | set(stage.keep)]  # by this stage
    combo = next((v for v in made if v.name == f"combo_{stage.name}"), None)
    without = [v for v in made if v.name.startswith(f"combo_{stage.name}_without_")]  # leave_one_out
    stacks = [v for v in made if v.combined_from and v is not combo and v not in without]
    text = (f"Ranked by the mean FID over seeds ({prev.name}/results.md); {stage.name} takes "
            f"{'the top ' + str(stage.top) if stage.top else 'every variant'}"
            f"{' and keeps ' + ', '.join(stage.keep) if stage.keep else ''}"
            + (f", and trains {combo.name}: the {combo.note} ({' '.join(combo.overrides)})" if combo else
               ("; no combination (fewer than 2 compatible variants beat the kept ones)" if stage.combine else "")))
    if stage.stack:
        text += (f"; stacked on the best: {', '.join(v.name for v in stacks)}" if stacks else
                 "; nothing stacked (the best is kept, or no runner-up beats the kept ones and merges with it)")
    if stage.leave_one_out and combo:
        text += (f"; and the combination without each of its variants: {', '.join(v.name for v in without)}"
                 if without else "; the combination without each of its variants is a variant taken already")
    on_best = [v.name for v in made if v.on_best_of]
    if on_best:
        text += f"; kept on the best: {', '.join(on_best)}"
    widened = next((v.name for v in chosen if v.base_evals is not None), None)  # the best, as promoted() found it
    if widened:
        text += f"; the best, {widened}, is also scored on {', '.join(stage.best_evals)}"
    if not_stacked:
        text += f" (left out: {'; '.join(not_stacked)})"
    lines = [f"## {prev.name} -> {stage.name}", "", text + ".", "",
             "| rank | variant | FID | seeds | goes on |", "|---|---|---|---|---|"]
    lines += [f"| {i + 1} | {v} | {f:.2f} | {n} | {'yes' if v in taken else ''} |" for i, (v, f, n) in enumerate(ranked)]
    return lines + [""]


def _stage_table(spec: AblationSpec) -> list[str]:
    lines = ["## Stages", "", "| stage | budget | seeds | variants | results |", "|---|---|---|---|---|"]
    for st in spec.stages:
        lines.append(f"| {st.name} | {_budget_text(st)} | {', '.join(map(str, st.seeds))} | "
                     f"{'top ' + str(st.top) if st.top else 'all'}{' + ' + ', '.join(st.keep) if st.keep else ''}"
                     f"{f' + the best with each of the next {st.stack}' if st.stack else ''}"
                     f"{' but ' + ', '.join(st.skip) if st.skip else ''} | "
                     f"[{st.name}/results.md]({st.name}/results.md) |")
    return lines

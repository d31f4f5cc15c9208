"""Staged ablations: every variant on a short screening budget, then the best ones on the full budget.

A file with ``stages:`` (ditlab.experiments.ablation_spec) is run stage by stage. Each stage is a plain
ablation of its own (its budget and seeds, a subset of the variants) in OUT/STAGE, with the usual runs,
scores, grids and results, so the sequential and the multi-GPU runners do the work unchanged. The first
stage takes every variant (or those of --only); a later one the ``top`` best of the stage before it, by the
mean over seeds of the FID on ``rank_by`` (the best path of a variant counts), plus ``keep`` and the
low-resolution variants their cascades need. OUT/stages.md lists each stage's ranking and who went on.

A stage starts only when the stage before it is complete (every score written); --budget-s counts across
the stages of one invocation, and exit code 3 means "run the same command again".
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from ditlab.configlib import ConfigError
from ditlab.experiments.build_check import DataFacts, check_builds
from ditlab.experiments.ablation_spec import AblationSpec, Stage, Variant, check_stage_evals
from ditlab.experiments.results import read_scores

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


def promoted(spec: AblationSpec, stage: Stage, ranked: list[tuple[str, float, int]],
             candidates: Optional[list[Variant]] = None, facts: Optional[DataFacts] = None,
             extra: Sequence[str] = ()) -> list[Variant]:
    """The variants a stage takes from the ranking of the stage before (whose variants are ``candidates``,
    default the file's): its top ones, those it keeps, and with ``combine`` their combination (see
    :func:`combination` for ``facts`` and ``extra``)."""
    candidates = list(spec.variants if candidates is None else candidates)
    names = {v for v, _, _ in ranked[:stage.top]} if stage.top else {v for v, _, _ in ranked}
    names |= set(stage.keep)
    known = {v.name for v in candidates}
    chosen = [v for v in candidates if v.name in names] + [v for v in spec.variants
                                                          if v.name in names and v.name not in known]
    combo = combination(spec, stage, ranked, candidates, facts, extra) if stage.combine else None
    if combo is not None and all(sorted(v.overrides) != sorted(combo.overrides) for v in chosen):
        chosen.append(combo)
    return chosen


def override_key(override: str) -> str:
    return override.partition("=")[0].strip()


# Keys that set others in effect: model.arch names a width, depth and head count, which explicit
# model.hidden_size / depth / num_heads override. Merging b2 (model.arch=DiT-B/2) after deep_narrow (its own
# width and depth) would train deep_narrow under B/2's name, so the two clash as two learning rates do.
IMPLIED_KEYS = {"model.arch": ("model.hidden_size", "model.depth", "model.num_heads")}


def _touched(keys) -> set[str]:
    """The keys a set of override keys decides, IMPLIED_KEYS included."""
    return set(keys).union(*(IMPLIED_KEYS.get(k, ()) for k in keys))


def combination(spec: AblationSpec, stage: Stage, ranked: list[tuple[str, float, int]],
                candidates: list[Variant], facts: Optional[DataFacts] = None,
                extra: Sequence[str] = ()) -> Optional[Variant]:
    """combo_STAGE: the overrides of the best ``stage.combine`` variants of the ranking that beat every kept
    variant (e.g. the baseline), merged in ranking order. A variant whose override sets a key a better one
    already set to another value, whose overrides do not load together with the others (a config error, or an
    option the trainer refuses at start-up), or, given the study's ``facts``, whose network cannot be built
    with the others' options (ditlab.experiments.build_check) is left out, and the note says why; None when
    fewer than two remain. Cascade variants (lo_variant) are not combined. ``extra``: the command line's
    overrides of every variant (--set)."""
    from ditlab.experiments.ablation import variant_config
    from ditlab.train.trainer import check_training_config

    by_name = {v.name: v for v in candidates}
    kept_at = [i for i, (name, _, _) in enumerate(ranked) if name in stage.keep]
    better = ranked[:min(kept_at)] if kept_at else ranked
    pool = [by_name[n] for n, _, _ in better if n in by_name and by_name[n].overrides and not by_name[n].lo_variant]
    merged: list[str] = []
    keys: dict[str, str] = {}
    used: list[Variant] = []
    left_out: list[str] = []
    for v in pool:
        if len(used) == stage.combine:
            break
        own = {override_key(o): o for o in v.overrides}
        clash = next((k for k, o in own.items() if k in keys and keys[k] != o), None)
        if clash is None:  # a size key against an architecture name (IMPLIED_KEYS), either way round
            clash = next((k for k in sorted(_touched(own) & _touched(keys)) if (k in own) != (k in keys)), None)
        if clash is not None:  # conflicts with a better variant (e.g. two learning rates)
            left_out.append(f"{v.name} (sets {clash} otherwise)")
            continue
        trial = Variant(f"combo_{stage.name}", merged + [o for k, o in own.items() if k not in keys],
                        list(v.paths))
        try:
            cfg = variant_config(spec, trial, spec.seeds[0], Path("unused"), list(extra))
            check_training_config(cfg)
            info = facts(cfg) if facts is not None else None
            if info is not None:
                check_builds(cfg, info)
        except (ConfigError, ValueError) as err:  # options that cannot work together
            left_out.append(f"{v.name} ({str(err).splitlines()[0]})")
            continue
        merged, used = trial.overrides, used + [v]
        keys.update(own)
    if len(used) < 2:
        return None
    first = used[0]
    note = f"combination of {' + '.join(v.name for v in used)}"
    if left_out:
        note += f"; left out: {'; '.join(left_out)}"
    return Variant(f"combo_{stage.name}", merged, list(first.paths), note=note, evals=list(first.evals),
                   combined_from=[v.name for v in used])


def stage_complete(spec: AblationSpec, out: Path) -> bool:
    """Every (variant, seed, path, eval) of the stage's plain ablation has its score file."""
    from ditlab.experiments.ablation import score_path

    return all(score_path(out, f"{v.name}-s{seed}", p, e).exists()
               for seed in spec.seeds for v in spec.variants for p, e, _ in spec.scores_of(v))


def run_stages(spec: AblationSpec, out, run_stage: Callable[[AblationSpec, Path, float], int],
               budget_s: float = 0.0, only: list[str] = (), stage_name: Optional[str] = None,
               log: Callable[[str], None] = print, overrides: Sequence[str] = ()) -> int:
    """Run the stages in order (or only ``stage_name``); ``run_stage(plain_spec, folder, budget_s)`` does one
    stage's work and returns 0, EXIT_MORE_TO_DO or 1 (units failed: the next stage waits for them). Returns 0
    when the last stage asked for is complete.
    ``overrides``: the command line's overrides of every variant (--set), for checking a combination."""
    from ditlab.experiments.ablation import check_variants

    out = Path(out)
    names = [s.name for s in spec.stages]
    if stage_name is not None and stage_name not in names:
        raise ValueError(f"--stage {stage_name}: no such stage; the file has {', '.join(names)}")
    known = {v.name for v in spec.variants}
    for name in only:
        if name not in known:
            raise ValueError(f"--only {name}: no such variant; the file has {sorted(known)}")
    check_variants(spec, [])  # fills in default paths, fails early on a bad variant
    facts = DataFacts(out, load_data=True)  # a combination's network is built before it trains
    start = time.monotonic()
    lines = [f"# Stages of {spec.source.name}", ""]
    variants = [v for v in spec.variants if not only or v.name in only]
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
            variants = promoted(spec, stage, ranked, prev_spec.variants, facts, overrides)
            lines += _ranking_lines(prev, stage, ranked, variants)
            _write_stages(out, spec, lines)  # now: a stage can run for many device commands
        plain = stage_spec(spec, stage, variants)
        if stage_name is not None and stage.name != stage_name:
            continue  # an earlier stage: only its ranking is needed
        left = 0.0
        if budget_s > 0:
            left = budget_s - (time.monotonic() - start)
            if left <= 0:
                code = EXIT_MORE_TO_DO
                break
        log(f"ditlab ablate: stage {stage.name} ({len(plain.variants)} variants x {len(plain.seeds)} seeds, "
            f"{_budget_text(stage)}) in {folder}")
        code = run_stage(plain, folder, left)
        if code:
            break
    _write_stages(out, spec, lines)
    return code


def _write_stages(out: Path, spec: AblationSpec, lines: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "stages.md").write_text("\n".join(lines + _stage_table(spec)) + "\n")


def _budget_text(stage: Stage) -> str:
    b = stage.budget
    text = f"{b.time_limit:g} s" if b.time_limit else f"{b.steps} steps"
    return text + (f", FID-{b.eval_num} every {b.eval_every} steps" if b.eval_every else "")


def _ranking_lines(prev: Stage, stage: Stage, ranked, chosen: list[Variant]) -> list[str]:
    taken = {v.name for v in chosen}
    combo = next((v for v in chosen if v.name == f"combo_{stage.name}"), None)
    lines = [f"## {prev.name} -> {stage.name}", "",
             f"Ranked by the mean FID over seeds ({prev.name}/results.md); {stage.name} takes "
             f"{'the top ' + str(stage.top) if stage.top else 'every variant'}"
             f"{' and keeps ' + ', '.join(stage.keep) if stage.keep else ''}"
             + (f", and trains {combo.name}: the {combo.note} ({' '.join(combo.overrides)})" if combo else
                ("; no combination (fewer than 2 compatible variants beat the kept ones)" if stage.combine else ""))
             + ".", "",
             "| rank | variant | FID | seeds | goes on |", "|---|---|---|---|---|"]
    lines += [f"| {i + 1} | {v} | {f:.2f} | {n} | {'yes' if v in taken else ''} |" for i, (v, f, n) in enumerate(ranked)]
    return lines + [""]


def _stage_table(spec: AblationSpec) -> list[str]:
    lines = ["## Stages", "", "| stage | budget | seeds | variants | results |", "|---|---|---|---|---|"]
    for st in spec.stages:
        lines.append(f"| {st.name} | {_budget_text(st)} | {', '.join(map(str, st.seeds))} | "
                     f"{'top ' + str(st.top) if st.top else 'all'}{' + ' + ', '.join(st.keep) if st.keep else ''}"
                     f"{' but ' + ', '.join(st.skip) if st.skip else ''} | "
                     f"[{st.name}/results.md]({st.name}/results.md) |")
    return lines

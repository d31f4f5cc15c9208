"""Who a later stage of a staged ablation takes (ditlab.experiments.stages): the top of the stage before's
ranking, the variants it keeps, and the variants made from them.

- ``combine: K``: combo_STAGE, the overrides of the best K variants that beat every kept one, merged; with
  ``leave_one_out`` also that combination without each of them (combo_STAGE_without_NAME).
- ``stack: K``: BEST+X, the best variant with each of the next K alone (greedy forward selection: a leader far
  ahead is combined with one change at a time before a combination of several is trusted).
- ``on_best``: a kept variant that is a change to whatever leads (e.g. post-hoc EMA snapshots) trains as
  BEST+NAME; a measurement on the leading recipe, never promoted by its rank.
- ``best_evals``: the best variant is also scored on these evals, in that stage only.

Merging (:func:`merged`) leaves out a variant that sets a key a better one set otherwise, whose options do not
load together, or whose network cannot be built with the others' options (ditlab.experiments.build_check).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

from ditlab.configlib import ConfigError
from ditlab.experiments.ablation_spec import AblationSpec, Stage, Variant
from ditlab.experiments.build_check import DataFacts, check_builds

Ranking = list[tuple[str, float, int]]  # (variant, mean FID, seeds), best first: ditlab.experiments.stages.ranking


def promoted(spec: AblationSpec, stage: Stage, ranked: Ranking,
             candidates: Optional[list[Variant]] = None, facts: Optional[DataFacts] = None,
             extra: Sequence[str] = (), left_out: Optional[list[str]] = None) -> list[Variant]:
    """The variants a stage takes from the ranking of the stage before (whose variants are ``candidates``,
    default the file's): its top ones, those it keeps, with ``combine`` their combination and with ``stack`` the
    best stacked with each runner-up (see :func:`combination` and :func:`stacked` for ``facts`` and ``extra``);
    a made variant whose overrides equal one already taken is not taken twice. With ``best_evals`` the best
    variant is also scored on those evals, and a kept variant marked ``on_best`` is trained on top of the best
    (:func:`on_the_best`). ``left_out`` (when given) receives why runners-up were not stacked, or a kept
    variant not put on the best."""
    candidates = [dataclasses.replace(v, evals=v.base_evals, base_evals=None) if v.base_evals is not None else v
                  for v in (spec.variants if candidates is None else candidates)]  # a stage's widening ends there
    measurements = {v.name for v in candidates if v.on_best_of}  # BEST+NAME: its score ranks, it is not promoted
    ranked = [r for r in ranked if r[0] not in measurements]
    names = {v for v, _, _ in ranked[:stage.top]} if stage.top else {v for v, _, _ in ranked}
    names |= set(stage.keep)
    known = {v.name for v in candidates}
    chosen = [v for v in candidates if v.name in names] + [v for v in spec.variants
                                                          if v.name in names and v.name not in known]
    best = next((v for v in chosen if ranked and v.name == ranked[0][0]), None)
    if best is not None:
        chosen = [on_the_best(spec, v, best, facts, extra, left_out) if v.on_best and v.name in stage.keep else v
                  for v in chosen]
        if stage.best_evals:
            own = best.evals or list(spec.evals)
            wide = dataclasses.replace(best, evals=own + [e for e in stage.best_evals if e not in own],
                                       base_evals=list(best.evals))
            chosen = [wide if v is best else v for v in chosen]
    made = []
    if stage.combine:
        combo = combination(spec, stage, ranked, candidates, facts, extra)
        if combo is not None:
            made.append(combo)
            if stage.leave_one_out:
                made += leave_one_out(spec, combo, candidates, extra)
    if stage.stack:
        stacks, why = stacked(spec, stage, ranked, candidates, facts, extra)
        made += stacks
        if left_out is not None:
            left_out += why
    for v in made:
        same = next((i for i, c in enumerate(chosen) if sorted(v.overrides) == sorted(c.overrides)), None)
        if same is None:
            chosen.append(v)
        elif v.left_out_of and not chosen[same].left_out_of:  # a variant taken anyway is also a leave-one-out
            chosen[same] = dataclasses.replace(chosen[same], left_out_of=v.left_out_of)
    return chosen


def on_the_best(spec: AblationSpec, variant: Variant, best: Variant, facts: Optional[DataFacts] = None,
                extra: Sequence[str] = (), left_out: Optional[list[str]] = None) -> Variant:
    """BEST+NAME: ``variant``'s overrides (a change, e.g. post-hoc EMA snapshots) merged onto the best variant's,
    scored on ``variant``'s evals; ``variant`` itself where the best has no overrides (it is the file's base) or
    where the two do not merge (:func:`merged`; the reason goes to ``left_out``)."""
    if not best.overrides or best.name == variant.name:
        return variant
    name = f"{best.name}+{variant.name}"
    used, overrides, why = merged(spec, name, [best, variant], 2, facts, extra)
    if len(used) < 2:
        if left_out is not None:
            left_out += [f"{variant.name} not on {best.name}: {'; '.join(why)}"]
        return variant
    return Variant(name, overrides, list(best.paths), note=f"{variant.name} on {best.name}", evals=list(variant.evals),
                   on_best_of=best.name)


def override_key(override: str) -> str:
    return override.partition("=")[0].strip()


# Keys that set others in effect: model.arch names a width, depth and head count, which explicit
# model.hidden_size / depth / num_heads override. Merging b2 (model.arch=DiT-B/2) after deep_narrow (its own
# width and depth) would train deep_narrow under B/2's name, so the two clash as two learning rates do.
IMPLIED_KEYS = {"model.arch": ("model.hidden_size", "model.depth", "model.num_heads")}


def _touched(keys) -> set[str]:
    """The keys a set of override keys decides, IMPLIED_KEYS included."""
    return set(keys).union(*(IMPLIED_KEYS.get(k, ()) for k in keys))


def combination(spec: AblationSpec, stage: Stage, ranked: Ranking,
                candidates: list[Variant], facts: Optional[DataFacts] = None,
                extra: Sequence[str] = ()) -> Optional[Variant]:
    """combo_STAGE: the overrides of the best ``stage.combine`` variants of the ranking that beat every kept
    variant (e.g. the baseline), merged in ranking order (see :func:`merged` for what is left out and why); a
    variant ranked below one whose overrides it extends (BEST+X below BEST: X did not help there) is left out
    too. None when fewer than two remain. ``extra``: the command line's overrides of every variant (--set)."""
    pool, left_out = [], []
    for v in _mergeable(stage, ranked, candidates):
        # a change that lost on top of a better variant (a stack BEST+X ranked below BEST) is not merged back in
        under = next((u for u in pool if set(u.overrides) < set(v.overrides)), None)
        if under is not None:
            left_out.append(f"{v.name} (ranked below {under.name}, which it extends)")
        else:
            pool.append(v)
    used, overrides, clashes = merged(spec, f"combo_{stage.name}", pool, stage.combine, facts, extra)
    left_out += clashes
    if len(used) < 2:
        return None
    note = f"combination of {' + '.join(v.name for v in used)}"
    if left_out:
        note += f"; left out: {'; '.join(left_out)}"
    return Variant(f"combo_{stage.name}", overrides, list(used[0].paths), note=note, evals=list(used[0].evals),
                   combined_from=[v.name for v in used])


def leave_one_out(spec: AblationSpec, combo: Variant, candidates: list[Variant],
                  extra: Sequence[str] = ()) -> list[Variant]:
    """combo_STAGE_without_NAME for each variant NAME the combination merged: the others' overrides merged as
    the combination merged them (a combination of two leaves the other variant itself, under its own name). What
    each change adds on top of the rest is the combination's FID against this one's, at the same budget and
    seeds; a change ranked into the combination on one short run can thus be dropped from the recipe."""
    by_name = {v.name: v for v in candidates}
    used = [by_name[n] for n in combo.combined_from]
    out = []
    for gone in used:
        rest = [v for v in used if v is not gone]
        if len(rest) == 1:
            out.append(dataclasses.replace(rest[0], left_out_of=(combo.name, gone.name)))
            continue
        name = f"{combo.name}_without_{gone.name}"
        kept, overrides, _ = merged(spec, name, rest, len(rest), None, extra)  # they merged once: they merge again
        out.append(Variant(name, overrides, list(combo.paths), note=f"{combo.name} without {gone.name}",
                           evals=list(combo.evals), combined_from=[v.name for v in kept],
                           left_out_of=(combo.name, gone.name)))
    return out


def stacked(spec: AblationSpec, stage: Stage, ranked: Ranking, candidates: list[Variant],
            facts: Optional[DataFacts] = None, extra: Sequence[str] = ()) -> tuple[list[Variant], list[str]]:
    """BEST+X for the ranking's best variant and each of the next ``stage.stack`` variants that beat every kept
    one and merge with it (see :func:`merged`): one change at a time on top of the leader, for a leader far
    ahead of the rest, whose lead a combination of several changes could hide. Returns the variants and the
    reasons those left out were left out."""
    pool = _mergeable(stage, ranked, candidates)
    if not pool or pool[0].name != ranked[0][0]:  # the best is a kept variant (or has no overrides): no leader
        return [], []
    best, out, left_out = pool[0], [], []
    for other in pool[1:]:
        if len(out) == stage.stack:
            break
        name = f"{best.name}+{other.name}"
        used, overrides, why = merged(spec, name, [best, other], 2, facts, extra)
        if len(used) < 2:
            left_out += why
            continue
        same = next((v.name for v in (best, other) if sorted(v.overrides) == sorted(overrides)), None)
        if same is not None:  # one variant's overrides hold the other's: nothing new to train
            left_out.append(f"{other.name} (with {best.name} it is {same} again)")
            continue
        out.append(Variant(name, overrides, list(best.paths), note=f"{best.name} with {other.name}",
                           evals=list(best.evals), combined_from=[best.name, other.name]))
    return out, left_out


def _mergeable(stage: Stage, ranked: Ranking, candidates: list[Variant]) -> list[Variant]:
    """The ranking's variants above every kept one, best first, that have overrides to merge (cascade variants,
    lo_variant, are not merged)."""
    by_name = {v.name: v for v in candidates}
    kept_at = [i for i, (name, _, _) in enumerate(ranked) if name in stage.keep]
    better = ranked[:min(kept_at)] if kept_at else ranked
    return [by_name[n] for n, _, _ in better if n in by_name and by_name[n].overrides and not by_name[n].lo_variant]


def merged(spec: AblationSpec, name: str, pool: list[Variant], most: int, facts: Optional[DataFacts] = None,
           extra: Sequence[str] = ()) -> tuple[list[Variant], list[str], list[str]]:
    """The overrides of up to ``most`` variants of ``pool``, merged in order: (the variants used, the merged
    overrides, why each other one was left out). A variant whose override sets a key a better one already set to
    another value, whose overrides do not load together with the others (a config error, or an option the
    trainer refuses at start-up), or, given the study's ``facts``, whose network cannot be built with the
    others' options (ditlab.experiments.build_check) is left out."""
    from ditlab.experiments.ablation import variant_config
    from ditlab.train.trainer import check_training_config

    overrides: list[str] = []
    keys: dict[str, str] = {}
    used: list[Variant] = []
    left_out: list[str] = []
    for v in pool:
        if len(used) == most:
            break
        own = {override_key(o): o for o in v.overrides}
        clash = next((k for k, o in own.items() if k in keys and keys[k] != o), None)
        if clash is None:  # a size key against an architecture name (IMPLIED_KEYS), either way round
            clash = next((k for k in sorted(_touched(own) & _touched(keys)) if (k in own) != (k in keys)), None)
        if clash is not None:  # conflicts with a better variant (e.g. two learning rates)
            left_out.append(f"{v.name} (sets {clash} otherwise)")
            continue
        trial = Variant(name, overrides + [o for k, o in own.items() if k not in keys], list(v.paths))
        try:
            cfg = variant_config(spec, trial, spec.seeds[0], Path("unused"), list(extra))
            check_training_config(cfg)
            info = facts(cfg) if facts is not None else None
            if info is not None:
                check_builds(cfg, info)
        except (ConfigError, ValueError) as err:  # options that cannot work together
            left_out.append(f"{v.name} ({str(err).splitlines()[0]})")
            continue
        overrides, used = trial.overrides, used + [v]
        keys.update(own)
    return used, overrides, left_out

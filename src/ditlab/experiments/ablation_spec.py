"""The ablation file read by ``ditlab ablate``: a base config, a budget, sample settings and variants.

::

    config: ../cifar10_lift.yaml         # preset every variant starts from (relative to this file)
    overrides: [data.hflip=true]         # applied to every variant, before the variant's own
    seeds: [0]                           # training seeds; every variant trains once per seed
    budget: {steps: 1000000, time_limit: 75}   # train.steps and train.time_limit of every run
    sample: {num: 2000, seed: 1, sampler: heun, steps: 20, batch_size: 1000, cfg_scale: 1.0}
    errors: {grid: 12, num: 256, batch_size: 256}   # the per-node error grid of the dp-* paths
    evals:                               # optional: named sample settings, every variant scored on each
      cfg: {cfg_scale: 2.5, cfg_interval: [0.28, 5.42]}
      nocfg: {cfg_scale: 1.0}
    stages:                              # optional: screen everything briefly, then the best for longer
      screen: {time_limit: 120}
      final: {time_limit: 420, seeds: [0, 1], top: 3, keep: [baseline]}
    time_to_fid: [10, 7, 5]              # columns: training seconds until the in-training FID reached each
    baseline: baseline                   # optional: results.md compares every variant with it, paired by seed
    eval_pairs: {nocfg: cfg}             # optional: an eval against another on the same trainings, paired by seed
    variants:
      baseline: {overrides: [task.kind=image], paths: [default], note: "single scale"}
      lift:     {overrides: [task.kind=lift], paths: [diagonal, dp-hi]}
      small:    {overrides: [task.kind=image, data.image_size=16], paths: [default]}
      casc:     {overrides: [task.kind=lift], paths: [cascade], lo_variant: small}

``evals``: each name is a set of sample settings (sampler, steps, cfg_scale, cfg_interval, eta, time_shift, and
ema_sigma_rel: the post-hoc EMA of that width, reconstructed from the run's snapshots, instead of its EMA) over
``sample``; a variant may list the ones it is scored on (``evals: [cfg]``; default all). Without
``evals`` every pair is scored once with ``sample`` (score files as before).

``stages`` (ditlab.experiments.stages): each stage is a budget (steps, time_limit, and eval_every /
eval_num for FID during training) with its training seeds; the first trains every variant, a later one
the ``top`` variants of the stage before it (mean FID over seeds on ``rank_by``, an eval name, default
the first; the best path counts) plus those in ``keep``; ``combine: K`` also trains combo_STAGE, the
overrides of the best K variants that beat every kept one, merged; ``stack: K`` trains the best variant with
each of the next K that beat every kept one, one at a time (BEST+X), and a stage whose budget, seeds and sample
settings equal the stage before's takes the scores of the variants both train from there instead of training
them again (a second screen round at the screen's budget costs only its new variants); ``leave_one_out: true``
(with ``combine``) also trains the combination without each of its variants, combo_STAGE_without_NAME (what each
merged change adds to the others); ``best_evals: [EVAL]``
scores the best variant of the stage before on these evals too, and a kept variant with ``on_best: true`` is
trained as a change to that best (BEST+NAME: its overrides merged onto the best's). ``skip: [NAME]`` leaves variants out of a
stage (on the first, only ones a later stage keeps: e.g. EMA lengths, which a screen's short budget would
misjudge). Each stage has its own folder OUT/STAGE.
Without ``stages`` the ``budget`` section is the one budget.

``baseline``: the variant the others are measured against: results.md gets a table (and
results_against_baseline.png) of each variant's FID gain over it, paired by training seed, with twice its
standard error from the pooled seed noise (ditlab.experiments.pairs), in every stage that trains it. A variant
with ``against_baseline: false`` stays out of that table (a helper run whose FID does not compare: LIFT's
16x16 ``baseline_lo``).

``eval_pairs``: eval -> its reference eval (both in ``evals``): results.md gets a table (and results_evals.png) of
each variant's FID on the eval against its FID on the reference, on the same trainings, paired by training seed:
what a sampler, a guidance scale or a post-hoc EMA width gains over the settings it is measured against.

Unknown keys are errors naming the key. Paths: "default" for single-scale kinds (the task's own
grid), any ditlab.tasks.lift.paths name for task.kind=lift (default [diagonal]). The ``cascade``
path needs ``lo_variant``: the variant (task.kind=image, at the LIFT image size / task.factor) whose
run of the same training seed generates the low resolution; the runner trains it first.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

import yaml

from ditlab.configlib import ConfigError


@dataclass
class Budget:
    steps: int = 1_000_000
    time_limit: float = 0.0  # seconds of training per run (0: steps only)
    # FID during training (train.eval_every of every run, against the ablation's --ref, with the first
    # eval's sample settings): the results' time-to-FID columns and curves. 0: off.
    eval_every: int = 0
    eval_num: int = 10_000


@dataclass
class SampleSpec:
    num: int = 2000
    seed: int = 1
    sampler: str = "heun"
    steps: int = 20
    batch_size: int = 1000
    cfg_scale: float = 1.0
    cfg_interval: Optional[tuple[float, float]] = None  # guide only where sigma/alpha is in (lo, hi]
    eta: float = 0.0
    time_shift: float = 1.0  # flow sampling grid t' = s t / (1 + (s - 1) t) (sample.time_shift)
    # > 0: sample the post-hoc EMA of this width (EDM2; the run needs ema.posthoc_sigma_rels), 0: the run's EMA
    ema_sigma_rel: float = 0.0


@dataclass
class ErrorsSpec:
    grid: int = 12
    num: int = 256
    batch_size: int = 256
    seed: int = 0


@dataclass
class Variant:
    name: str
    overrides: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    note: str = ""
    lo_variant: str = ""  # the variant whose run supplies the low resolution of the cascade path
    evals: list[str] = field(default_factory=list)  # names of AblationSpec.evals it is scored on ([]: all)
    # a stage's combination (ditlab.experiments.promotion.combination): the variants whose overrides it merges
    combined_from: list[str] = field(default_factory=list)
    # a change to whatever leads: where a stage keeps this variant, it trains the best variant of the stage
    # before with these overrides merged in (BEST+NAME), e.g. post-hoc EMA snapshots of the leading recipe
    on_best: bool = False
    # set on BEST+NAME (the best of the stage before with an on_best variant's change): the best's name. A
    # measurement on the leading recipe, not a candidate: later stages do not promote it by its rank
    on_best_of: str = ""
    # the variant's own evals where a stage widened them for its best (Stage.best_evals); the next stage
    # takes the variant with these again
    base_evals: Optional[list[str]] = None
    # set on a combination without one of its changes (promotion.leave_one_out): (the combination's name, the
    # change left out); results.md's leave-one-out table pairs the two by it, not by the name
    left_out_of: Optional[tuple[str, str]] = None
    # false: results.md's "Against the baseline" table leaves it out (a helper run that is not a candidate and
    # whose FID does not compare with the baseline's, e.g. a 16x16 run that generates a cascade's low resolution)
    against_baseline: bool = True


@dataclass
class Stage:
    """One stage of a staged study: its budget and seeds, and which variants it takes from the stage before."""
    name: str
    budget: Budget
    seeds: list[int]
    top: int = 0  # 0: every variant (the first stage always trains every variant)
    rank_by: str = ""  # the eval whose FID ranks the stage before (default: the first eval)
    keep: list[str] = field(default_factory=list)  # variants always taken (e.g. the baseline)
    num: int = 0  # samples per score in this stage (0: the sample section's), e.g. FID-5k to screen
    # > 0: also train combo_STAGE, the overrides of the best `combine` variants of the stage before that beat
    # every kept variant, merged (ditlab.experiments.promotion.combination)
    combine: int = 0
    # > 0: also train BEST+X, the best variant of the stage before with the overrides of each of the next
    # `stack` that beat every kept variant (ditlab.experiments.promotion.stacked)
    stack: int = 0
    # evals the best variant of the stage before is also scored on (sampler settings, guidance scales: swept on
    # the leading model, at no extra training)
    best_evals: list[str] = field(default_factory=list)
    # the evals this stage scores ([]: every variant's own); e.g. screen on the guided FID alone and compare
    # samplers only on the longer runs
    evals: list[str] = field(default_factory=list)
    # variants this stage does not train: a question only a later stage's budget answers (a later stage's keep
    # takes such a variant in without a ranking)
    skip: list[str] = field(default_factory=list)
    # with combine: also train the combination without each of its variants (combo_STAGE_without_NAME): what
    # each merged change adds to the others at this stage's budget (ditlab.experiments.promotion.leave_one_out)
    leave_one_out: bool = False


@dataclass
class AblationSpec:
    source: Path
    config: str
    overrides: list[str]
    seeds: list[int]
    budget: Budget
    sample: SampleSpec
    errors: ErrorsSpec
    variants: list[Variant]
    evals: dict[str, SampleSpec] = field(default_factory=dict)  # name -> settings ({}: one, unnamed: sample)
    stages: list[Stage] = field(default_factory=list)
    time_to_fid: list[float] = field(default_factory=list)
    baseline: str = ""  # the variant the results compare every other with ("": none)
    eval_pairs: dict[str, str] = field(default_factory=dict)  # eval -> the eval results.md compares it with

    def evals_of(self, variant: Variant) -> list[tuple[str, SampleSpec]]:
        """The (eval name, sample settings) a variant is scored on; [("", sample)] without evals. A stage that
        scores only some evals (Stage.evals) leaves the others out of ``self.evals``: they are skipped."""
        if not self.evals:
            return [("", self.sample)]
        return [(name, self.evals[name]) for name in (variant.evals or list(self.evals)) if name in self.evals]

    def apart_from_baseline(self) -> list[str]:
        """The variants with ``against_baseline: false``: out of the baseline table and its pooled seed noise."""
        return [v.name for v in self.variants if not v.against_baseline]

    def curve_eval(self, variant: Variant) -> str:
        """The eval whose sample settings FID during training uses (the variant's first: variant_config), on the
        task's default path: the one score of a run that its time to FID describes."""
        return self.evals_of(variant)[0][0]

    def scores_of(self, variant: Variant) -> list[tuple[str, str, SampleSpec]]:
        """(path, eval name, sample settings) of every score a run of ``variant`` owes, in the file's order."""
        return [(p, name, s) for p in variant.paths for name, s in self.evals_of(variant)]


def check_stage_evals(stage: Stage, variants: list[Variant]) -> None:
    """A stage that names its evals must leave every variant that may reach it something to score."""
    if not stage.evals:
        return
    for v in variants:
        if v.evals and not set(v.evals) & set(stage.evals):
            raise ConfigError(f"stages.{stage.name}.evals ({', '.join(stage.evals)}) leaves variant {v.name} "
                              f"(evals: {', '.join(v.evals)}) nothing to score")


def _section(cls, data, key: str, source: Path):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{key} must be a mapping (in {source})")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key {key}.{unknown[0]} (in {source}); valid: {', '.join(sorted(names))}")
    out = cls()
    for k, v in data.items():
        default = getattr(out, k)
        if k == "cfg_interval":
            setattr(out, k, _interval(v, f"{key}.{k}", source))
            continue
        try:
            v = type(default)(v) if not isinstance(default, bool) else bool(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}.{k} must be a {type(default).__name__}, got {v!r} (in {source})") from None
        setattr(out, k, v)
    return out


def _interval(v, key: str, source: Path):
    if v is None:
        return None
    if (not isinstance(v, (list, tuple)) or len(v) != 2 or not all(isinstance(x, (int, float)) for x in v)
            or not 0 <= v[0] < v[1]):
        raise ConfigError(f"{key} must be null or [lo, hi] with 0 <= lo < hi, got {v!r} (in {source})")
    return (float(v[0]), float(v[1]))


def _str_list(v, key: str, source: Path) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, (str, int, float)) for x in v):
        raise ConfigError(f"{key} must be a list of strings (in {source})")
    return [str(x) for x in v]


def load_ablation(path) -> AblationSpec:
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"ablation file {source} not found")
    data = yaml.safe_load(source.read_text()) or {}
    top = {"config", "overrides", "seeds", "budget", "sample", "errors", "variants", "evals", "stages", "time_to_fid",
           "baseline", "eval_pairs"}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {source}; valid: {', '.join(sorted(top))}")
    if "config" not in data:
        raise ConfigError(f"{source} needs `config:` (the preset every variant starts from)")
    config = str((source.parent / data["config"]).resolve()) if not Path(data["config"]).is_absolute() else data["config"]
    variants_raw = data.get("variants") or {}
    if not isinstance(variants_raw, dict) or not variants_raw:
        raise ConfigError(f"{source} needs `variants:`, a mapping of name -> {{overrides, paths, note}}")
    variants = []
    for name, v in variants_raw.items():
        v = v or {}
        bad = sorted(set(v) - {"overrides", "paths", "note", "lo_variant", "evals", "on_best", "against_baseline"})
        if bad:
            raise ConfigError(f"unknown key variants.{name}.{bad[0]} in {source}; valid: against_baseline, evals, "
                              "lo_variant, note, on_best, overrides, paths")
        for flag in ("on_best", "against_baseline"):
            if not isinstance(v.get(flag, False), bool):
                raise ConfigError(f"variants.{name}.{flag} must be true or false (in {source})")
        if not str(name).replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"variant name {name!r} in {source}: use letters, digits, '-' and '_' (it names folders)")
        variants.append(Variant(str(name), _str_list(v.get("overrides"), f"variants.{name}.overrides", source),
                                _str_list(v.get("paths"), f"variants.{name}.paths", source), str(v.get("note", "")),
                                str(v.get("lo_variant") or ""),
                                _str_list(v.get("evals"), f"variants.{name}.evals", source),
                                on_best=v.get("on_best", False), against_baseline=v.get("against_baseline", True)))
    names = [v.name for v in variants]
    for v in variants:
        if v.lo_variant and (v.lo_variant not in names or v.lo_variant == v.name):
            raise ConfigError(f"variants.{v.name}.lo_variant: {v.lo_variant!r} is not another variant of {source} "
                              f"(variants: {', '.join(names)})")
        if bool(v.lo_variant) != ("cascade" in v.paths):
            raise ConfigError(f"variants.{v.name}: the cascade path and lo_variant go together (lo_variant names the "
                              f"variant whose run generates the cascade's low resolution) in {source}")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"seeds must be a non-empty list of integers (in {source})")
    sample = _section(SampleSpec, data.get("sample"), "sample", source)
    evals = _evals(data.get("evals"), sample, source)
    for v in variants:
        for e in v.evals:
            if e not in evals:
                raise ConfigError(f"variants.{v.name}.evals: {e!r} is not in evals: of {source} "
                                  f"({', '.join(evals) or 'none defined'})")
    budget = _section(Budget, data.get("budget"), "budget", source)
    _check_budget(budget, "budget", source)
    stages = _stages(data.get("stages"), seeds, names, evals, source)
    for stage in stages:  # at load, not hours into a study when the stage is reached
        check_stage_evals(stage, variants)
    time_to = data.get("time_to_fid") or []
    if not isinstance(time_to, list) or not all(isinstance(x, (int, float)) and x > 0 for x in time_to):
        raise ConfigError(f"time_to_fid must be a list of positive FID values, e.g. [10, 7, 5] (in {source})")
    if time_to and not (budget.eval_every or any(st.budget.eval_every for st in stages)):
        raise ConfigError(f"time_to_fid needs FID during training: set eval_every in budget: or a stage (in {source})")
    baseline = data.get("baseline") or ""
    if baseline and baseline not in names:
        raise ConfigError(f"baseline: {baseline!r} is not a variant of {source} (variants: {', '.join(names)})")
    for v in variants:
        if not v.against_baseline and not baseline:
            raise ConfigError(f"variants.{v.name}.against_baseline applies only with `baseline:` (in {source})")
        if not v.against_baseline and v.name == baseline:
            raise ConfigError(f"variants.{v.name}.against_baseline: {v.name} is the baseline (in {source})")
    return AblationSpec(source, config, _str_list(data.get("overrides"), "overrides", source), seeds, budget,
                        sample, _section(ErrorsSpec, data.get("errors"), "errors", source), variants, evals, stages,
                        [float(x) for x in time_to], str(baseline), _eval_pairs(data.get("eval_pairs"), evals, source))


def _eval_pairs(raw, evals: dict, source: Path) -> dict[str, str]:
    """``eval_pairs:``, checked: a mapping of eval -> reference eval, both defined in ``evals:`` and not the same."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise ConfigError(f"eval_pairs must be a mapping of eval -> reference eval, e.g. {{cfg2: cfg}} (in {source})")
    for name, ref in raw.items():
        for key, e in ((f"eval_pairs.{name}", name), (f"eval_pairs.{name}: {ref}", ref)):
            if e not in evals:
                raise ConfigError(f"{key}: {e!r} is not in evals: of {source} ({', '.join(evals) or 'none defined'})")
        if name == ref:
            raise ConfigError(f"eval_pairs.{name}: an eval against itself (in {source})")
    return dict(raw)


# What an eval may change of the sample: section.
EVAL_KEYS = ("sampler", "steps", "cfg_scale", "cfg_interval", "eta", "time_shift", "ema_sigma_rel")


def _evals(raw, sample: SampleSpec, source: Path) -> dict[str, SampleSpec]:
    from dataclasses import asdict

    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"evals must be a mapping of name -> sample settings (in {source})")
    out = {}
    for name, settings in raw.items():
        if not str(name).replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"eval name {name!r} in {source}: use letters, digits, '-' and '_' (it names files)")
        settings = settings or {}
        if not isinstance(settings, dict):
            raise ConfigError(f"evals.{name} must be a mapping (in {source})")
        bad = sorted(set(settings) - set(EVAL_KEYS))
        if bad:
            raise ConfigError(f"unknown key evals.{name}.{bad[0]} in {source}; an eval may set {', '.join(EVAL_KEYS)} "
                              "(num, seed and batch_size are the sample: section's, the same for every eval)")
        out[str(name)] = _section(SampleSpec, {**asdict(sample), **settings}, f"evals.{name}", source)
        if not 0 <= out[str(name)].ema_sigma_rel <= 12 ** -0.5:
            raise ConfigError(f"evals.{name}.ema_sigma_rel must lie in [0, {12 ** -0.5:.4f}] (0: the run's own EMA), "
                              f"got {out[str(name)].ema_sigma_rel} (in {source})")
    return out


def _check_budget(b: Budget, key: str, source: Path) -> None:
    if b.steps < 1 or b.time_limit < 0 or b.eval_every < 0 or b.eval_num < 1:
        raise ConfigError(f"{key}: steps and eval_num must be >= 1, time_limit and eval_every >= 0 (in {source})")


def _stages(raw, seeds: list[int], names: list[str], evals: dict, source: Path) -> list[Stage]:
    if raw is None:
        return []
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"stages must be a mapping of stage name -> budget (in {source})")
    stages = []
    budget_keys = {f.name for f in fields(Budget)}
    for i, (name, st) in enumerate(raw.items()):
        where = f"stages.{name}"
        st = dict(st or {})
        if not str(name).replace("_", "").replace("-", "").isalnum() or name in ("runs", "scores", "grids"):
            raise ConfigError(f"stage name {name!r} in {source}: letters, digits, '-' and '_', not runs/scores/grids "
                              "(it names a folder)")
        stage_keys = {"seeds", "top", "rank_by", "keep", "num", "combine", "stack", "best_evals", "evals", "skip",
                      "leave_one_out"}
        bad = sorted(set(st) - budget_keys - stage_keys)
        if bad:
            raise ConfigError(f"unknown key {where}.{bad[0]} in {source}; valid: "
                              f"{', '.join(sorted(budget_keys | stage_keys))}")
        budget = _section(Budget, {k: st[k] for k in budget_keys if k in st}, where, source)
        _check_budget(budget, where, source)
        st_seeds = st.get("seeds", seeds)
        if not isinstance(st_seeds, list) or not st_seeds or not all(isinstance(s, int) for s in st_seeds):
            raise ConfigError(f"{where}.seeds must be a non-empty list of integers (in {source})")
        top = st.get("top", 0)
        if not isinstance(top, int) or top < 0 or (i == 0 and top):
            raise ConfigError(f"{where}.top must be an integer >= 0 (0: every variant), and the first stage "
                              f"trains every variant (in {source})")
        rank_by = str(st.get("rank_by", ""))
        if rank_by and rank_by not in evals:
            raise ConfigError(f"{where}.rank_by: {rank_by!r} is not in evals: of {source}")
        keep = _str_list(st.get("keep"), f"{where}.keep", source)
        for k in keep:
            if k not in names:
                raise ConfigError(f"{where}.keep: {k!r} is not a variant of {source} (variants: {', '.join(names)})")
        num = st.get("num", 0)
        if not isinstance(num, int) or num < 0:
            raise ConfigError(f"{where}.num must be an integer >= 0 (0: sample.num) (in {source})")
        combine = st.get("combine", 0)
        if not isinstance(combine, int) or combine < 0 or (i == 0 and combine) or combine == 1:
            raise ConfigError(f"{where}.combine must be 0 or an integer >= 2, and not on the first stage (it merges the "
                              f"best variants of the stage before) (in {source})")
        stack = st.get("stack", 0)
        if not isinstance(stack, int) or isinstance(stack, bool) or stack < 0 or (i == 0 and stack):
            raise ConfigError(f"{where}.stack must be an integer >= 0, and not on the first stage (it stacks the best "
                              f"variant of the stage before with each of the next ones) (in {source})")
        st_evals = _str_list(st.get("evals"), f"{where}.evals", source)
        for e in st_evals:
            if e not in evals:
                raise ConfigError(f"{where}.evals: {e!r} is not in evals: of {source}")
        best_evals = _str_list(st.get("best_evals"), f"{where}.best_evals", source)
        for e in best_evals:
            if e not in evals:
                raise ConfigError(f"{where}.best_evals: {e!r} is not in evals: of {source}")
            if st_evals and e not in st_evals:
                raise ConfigError(f"{where}.best_evals: {e!r} is not among the stage's evals ({', '.join(st_evals)}), "
                                  f"so it would not be scored (in {source})")
        if best_evals and i == 0:
            raise ConfigError(f"{where}.best_evals: not on the first stage (it widens the evals of the best variant "
                              f"of the stage before) (in {source})")
        if stages and rank_by and stages[-1].evals and rank_by not in stages[-1].evals:
            raise ConfigError(f"{where}.rank_by: {rank_by!r} ranks stage {stages[-1].name}, which scores only "
                              f"{', '.join(stages[-1].evals)} (in {source})")
        skip = _str_list(st.get("skip"), f"{where}.skip", source)
        for k in skip:
            if k not in names:
                raise ConfigError(f"{where}.skip: {k!r} is not a variant of {source} (variants: {', '.join(names)})")
            if k in keep:
                raise ConfigError(f"{where}: {k!r} is both kept and skipped (in {source})")
        if skip and set(skip) >= set(names):
            raise ConfigError(f"{where}.skip leaves no variant to train (in {source})")
        leave_one_out = st.get("leave_one_out", False)
        if not isinstance(leave_one_out, bool) or (leave_one_out and not combine):
            raise ConfigError(f"{where}.leave_one_out must be true or false, and true only with combine (it leaves "
                              f"each combined variant out of the combination) (in {source})")
        stages.append(Stage(str(name), budget, st_seeds, top, rank_by, keep, num, combine, stack, best_evals, st_evals,
                            skip, leave_one_out))
    # A variant the first stage skips trains only where a later stage keeps it (a later stage's skip only
    # narrows what the ranking promotes).
    never = [k for k in (stages[0].skip if stages else []) if not any(k in st.keep for st in stages[1:])]
    if never:
        raise ConfigError(f"stages.{stages[0].name}.skip: {never[0]!r} is kept by no later stage, so it would never "
                          f"train; drop it from the variants instead (in {source})")
    return stages

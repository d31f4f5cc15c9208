"""Paired comparisons of an ablation's scores, by training seed: what each change of a combination adds (leave
one out), each variant against the baseline, each eval against its reference eval on the same trainings; each
with twice the standard error of its mean difference, from the noise pooled over the stage's scores, and the 95%
interval of that mean by Student's t on the pooled noise's degrees of freedom."""
from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ditlab.experiments.score_records import group_by_pair, score_key

# Student's t at 0.975 for 1 to 30 degrees of freedom (to 4 decimals; tests/experiments/test_pairs.py checks them
# against scipy, which is no dependency of the package); above 30, t_975's expansion in 1/df is exact to 1e-5.
_T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
          2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
          2.0518, 2.0484, 2.0452, 2.0423)
_Z_975 = 1.959963984540054


def t_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom: a mean's 95% interval is +- t_975(df)
    standard errors when its noise was estimated on df degrees of freedom (1.96 for a known noise)."""
    if df < 1:
        raise ValueError(f"t_975: degrees of freedom must be >= 1, got {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z, v = _Z_975, float(df)  # the Cornish-Fisher expansion (Abramowitz and Stegun 26.7.5), three terms
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3))


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
        then a paired difference varies less). With few degrees of freedom a mean difference past it can still
        be seed noise: ci95 is the test."""
        return None if self.seed_sd is None else 2.0 * self.seed_sd * (2.0 / len(self.seeds)) ** 0.5

    @property
    def ci95(self) -> float | None:
        """The half-width of the mean difference's 95% interval: its standard error times Student's t on the
        pooled noise's degrees of freedom. With few of them twice the standard error is too narrow (1 df: the
        interval is 6.4 times as wide, 3 df: 1.6 times, 5 df: 1.3 times), so this, not 2 SE, says whether a
        difference is more than seed noise."""
        two_se = self.two_se
        return None if two_se is None or self.seed_df < 1 else two_se / 2.0 * t_975(self.seed_df)


@dataclass(frozen=True)
class EvalPair(LeaveOneOut):
    """One eval of a variant against its reference eval (``eval_pairs:``) on the same trainings, paired by training
    seed: ``left_out`` is the variant, ``with_it`` the eval's FIDs and ``without`` the reference's, so ``diffs`` is
    the reference's FID minus the eval's (positive: the eval is better). Two evals of one training share that
    training's luck, which the seed-to-seed spread of FID (LeaveOneOut's noise) counts in full: here ``seed_sd`` is
    the standard deviation of a paired difference itself, pooled over the variants that have this eval pair (same
    path, eval and reference) on two or more seeds (``seed_df`` its degrees of freedom). Pairs of other evals do
    not enter it: a CFG scale's difference and a sampler's have spreads of their own."""

    @property
    def two_se(self) -> float | None:
        """Twice the standard error of the mean of n paired differences: sd / sqrt(n), doubled."""
        return None if self.seed_sd is None else 2.0 * self.seed_sd / len(self.seeds) ** 0.5


def pooled_seed_sd(records: list[dict]) -> dict[str, tuple[float, int]]:
    """"path" or "path / eval" (group_by_pair's label) -> (the seed-to-seed standard deviation of FID pooled over
    the variants that have two or more training seeds there, its degrees of freedom: the sum of each variant's
    seeds less one)."""
    by_label: dict[str, list[list[float]]] = {}
    for _, label, rs in group_by_pair(records):
        by_label.setdefault(label, []).append([r["fid"] for r in rs])
    return {label: pooled for label, groups in by_label.items() if (pooled := _pooled_sd(groups))}


def _pooled_sd(groups: Iterable[Sequence[float]]) -> tuple[float, int] | None:
    """The standard deviation pooled over groups of values, each weighted by its size less one, and its degrees
    of freedom (that weight's sum); None when no group has two values."""
    groups = [g for g in groups if len(g) > 1]
    df = sum(len(g) - 1 for g in groups)
    if not df:
        return None
    return (sum(statistics.variance(g) * (len(g) - 1) for g in groups) / df) ** 0.5, df


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
        fids.setdefault(score_key(r), {})[r["seed"]] = r["fid"]
    return fids


def _paired(change: str, path: str, eval_name: str, with_it: dict[int, float], without: dict[int, float],
            noise: dict[str, tuple[float, int]], kind: type[LeaveOneOut] = LeaveOneOut) -> LeaveOneOut | None:
    """The pair (a ``kind``) on the training seeds both sides have (None without any), with the pooled seed noise
    of its path / eval."""
    seeds = tuple(sorted(set(without) & set(with_it)))
    if not seeds:
        return None
    label = f"{path} / {eval_name}" if eval_name else path
    sd, df = noise.get(label, (None, 0))
    return kind(change, label, seeds, tuple(with_it[s] for s in seeds), tuple(without[s] for s in seeds), sd, df)


def _apart_and_noise(spec, records: list[dict]) -> tuple[set[str], dict[str, tuple[float, int]]]:
    """The variants with ``against_baseline: false`` and the seed noise pooled over the others: such a variant is
    in no table that compares variants, nor in their noise (an FID on another scale, 16x16 samples against the
    32x32 reference, has its own)."""
    left_out = set(spec.apart_from_baseline())
    return left_out, pooled_seed_sd([r for r in records if r["variant"] not in left_out])


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
    left_out, noise = _apart_and_noise(spec, records)
    pairs = []
    for (variant, p, e), with_it in fids.items():
        if variant != spec.baseline and variant not in left_out:
            ref_path = p if p in base_paths or len(base_paths) != 1 else next(iter(base_paths))
            pairs.append(_paired(variant, p, e, with_it, fids.get((spec.baseline, ref_path, e), {}), noise))
    return [pair for pair in pairs if pair]


def best_pairs(spec, records: list[dict]) -> list[LeaveOneOut]:
    """For each path / eval, its best variant (the lowest mean FID among the variants scored there on two or more
    training seeds) against every other variant scored there, paired by seed: ``left_out`` is the other variant,
    ``with_it`` the best's FIDs and ``without`` the other's, so ``diffs`` is the other's FID minus the best's
    (positive: the best is ahead), with the seed noise pooled as baseline_pairs pools it. ``label`` names the best
    ("path / eval: best NAME"). Whether the leader is clear of the runner-up is what picking a winner asks; the
    baseline table answers it only where the baseline is one of the two. The baseline's pair is in that table and
    a best combination's leave-one-out pairs in theirs, so they are left out here, as is a path / eval whose best
    is the baseline or that has no variant on two seeds."""
    fids = _fids_by_key(records)
    left_out, noise = _apart_and_noise(spec, records)
    by_label: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for (variant, p, e), fid in fids.items():
        if variant not in left_out:
            by_label.setdefault((p, e), {})[variant] = fid
    pairs = []
    for (p, e), variants in by_label.items():
        ranked = sorted((statistics.mean(f.values()), v) for v, f in variants.items() if len(f) > 1)
        if not ranked or ranked[0][1] == spec.baseline:
            continue
        best = ranked[0][1]
        elsewhere = {best, spec.baseline} | {v.name for v in spec.variants
                                             if v.left_out_of and v.left_out_of[0] == best}
        for variant, fid in variants.items():
            if variant not in elsewhere and (pair := _paired(variant, p, e, variants[best], fid, noise)):
                pairs.append(dataclasses.replace(pair, label=f"{pair.label}: best {best}"))
    return pairs


def eval_pairs(spec, records: list[dict]) -> list[EvalPair]:
    """For each (variant, path) scored on both an eval of ``spec.eval_pairs`` and its reference, the pair on the
    training seeds both scores have, in the order of ``records``; the noise of a paired difference is pooled per
    label ("path / eval vs reference") over the variants that have it (EvalPair)."""
    if not spec.eval_pairs:
        return []
    fids = _fids_by_key(records)
    pairs = [_paired(variant, p, f"{e} vs {ref}", fid, fids.get((variant, p, ref), {}), {}, EvalPair)
             for (variant, p, e), fid in fids.items() if (ref := spec.eval_pairs.get(e)) is not None]
    pairs = [pair for pair in pairs if pair]
    diffs_by_label: dict[str, list[tuple[float, ...]]] = {}
    for pair in pairs:
        diffs_by_label.setdefault(pair.label, []).append(pair.diffs)
    noise = {label: _pooled_sd(groups) or (None, 0) for label, groups in diffs_by_label.items()}
    return [dataclasses.replace(pair, seed_sd=noise[pair.label][0], seed_df=noise[pair.label][1]) for pair in pairs]

"""Post-hoc EMA (Karras et al. 2024, EDM2, section 3): choose the EMA length after training.

During training (``ema.posthoc_sigma_rels``) the trainer keeps one power-function EMA per sigma_rel
(:class:`ditlab.train.ema.PowerEMA`) and writes snapshots of them::

    RUN/ema_snapshots/step_00001000_sr0.050.safetensors   fp32 weights; metadata: step, ema_step, sigma_rel, gamma

A snapshot of exponent gamma taken when its last update was at step t averages the trajectory with the
profile p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t]. A weighted sum of snapshots averages it
with the same weighted sum of profiles, so the EMA of any other sigma_rel at step T is approximated by
the snapshot combination whose profiles are closest, in L2 over training time, to the target's profile:
the least-squares problem A x = b with A_ij = <p_i, p_j>, b_i = <p_i, p_target>, under sum_i x_i = 1. Each
profile has unit mass, so the combination's mass is sum_i x_i; the free solve leaves it short where the
snapshots cannot shape the target (1.7% short for sigma_rel 0.2 from snapshots every 1,000 of 8,347 steps),
and the reconstructed weights would be the average scaled by that factor: the constraint makes a constant
trajectory reconstruct to itself. (EDM2's reference code divides the free solution by its sum; the
constrained solve is the L2-closest unit-mass combination, slightly closer.) For two power profiles

    <p_a, p_b> = (g_a + 1)(g_b + 1) m^(g_a + g_b + 1) / ((g_a + g_b + 1) t_a^(g_a + 1) t_b^(g_b + 1)),  m = min(t_a, t_b)

(the integral of the product over [0, m], where both are non-zero). :func:`reconstruct` solves it and
writes ``RUN/checkpoints/posthoc_sr0.070``: a weights-only checkpoint
(:func:`ditlab.train.checkpoint.save_weights_checkpoint`) that ``ditlab sample --checkpoint
posthoc_sr0.070`` samples. docs/posthoc_ema.md has the commands and the costs.
"""
from __future__ import annotations

import json
import math
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from ditlab.train.checkpoint import (CheckpointError, load_checkpoint, load_weights, save_weights_checkpoint,
                                     write_weights_file)
from ditlab.train.ema import PowerEMA, gamma_from_sigma_rel

# A relative profile fit error above this is reported as a warning (`ditlab ema`, an ablation's results.md): the
# snapshots do not shape the request (e.g. sigma_rel 0.02 from snapshots of 0.05 and 0.10, or 0.2 from too few
# snapshot steps), so the weights are a poor stand-in for that EMA.
FIT_WARNING = 0.05

SNAPSHOT_DIR = "ema_snapshots"
SUPERSEDED_DIR = "superseded"  # inside SNAPSHOT_DIR: snapshots of steps a resumed run redoes
SNAPSHOT_KIND = "ditlab power-EMA snapshot"
_SNAPSHOT = re.compile(r"^step_(\d+)_sr(\d+\.\d+)\.safetensors$")


def sigma_rel_tag(sigma_rel: float) -> str:
    """``sr0.050``: the name part of a sigma_rel (3 decimals; ema.posthoc_sigma_rels must differ in them)."""
    return f"sr{sigma_rel:.3f}"


def snapshot_name(step: int, sigma_rel: float) -> str:
    return f"step_{int(step):08d}_{sigma_rel_tag(sigma_rel)}.safetensors"


def checkpoint_file(sigma_rel: float) -> str:
    """The power EMA's weights inside a training checkpoint (what resume continues from)."""
    return f"ema_power_{sigma_rel_tag(sigma_rel)}.safetensors"


def posthoc_checkpoint_name(sigma_rel: float, step: int | None = None) -> str:
    """``posthoc_sr0.070`` (the run's newest snapshots), ``posthoc_sr0.070_at_00001000`` (``--upto``)."""
    return f"posthoc_{sigma_rel_tag(sigma_rel)}" + ("" if step is None else f"_at_{int(step):08d}")


# ------------------------------------------------------------------------------ during training
class PosthocEMA:
    """The power EMAs of a run, one per sigma_rel: updates, snapshots, checkpoint state and resume."""

    def __init__(self, model: nn.Module, sigma_rels) -> None:
        self.emas = [PowerEMA(model, s) for s in sigma_rels]
        self._writer: ThreadPoolExecutor | None = None  # background snapshot files (write_snapshots)
        self._pending: list[Future] = []

    @property
    def sigma_rels(self) -> list[float]:
        return [e.sigma_rel for e in self.emas]

    def update(self, model: nn.Module, step: int, hold: torch.Tensor | None = None) -> None:
        for e in self.emas:
            e.update(model, step, hold=hold)

    def write_snapshots(self, run_dir, step: int, background: bool = False) -> list[Path]:
        """One file per sigma_rel for trainer step ``step``; none before the first update (an average of
        nothing: its profile would have t = 0). Returns the files' paths.

        ``background``: the weights are copied to host memory now (the EMAs may move on at once), and the
        files are written by a background thread while training goes on; :meth:`flush` waits for them and
        raises a write's error. Writing two S/2 snapshots takes ~1 s, which the training clock would count
        every ``ema.posthoc_every`` steps. At most one set is in flight: a call first waits for the last."""
        self.flush()
        jobs = []
        for e in self.emas:
            if e.last_step == 0:
                continue
            # a copy even on the CPU: the thread writes after the next updates have changed e's tensors
            sd = {k: v.detach().to("cpu", copy=True) for k, v in e.state_dict().items()}
            buffers = sorted(set(sd) & {name for name, _ in e.module.named_buffers()})
            meta = {"kind": SNAPSHOT_KIND, "step": str(int(step)), "ema_step": str(e.last_step),
                    "sigma_rel": repr(e.sigma_rel), "gamma": repr(e.gamma), "buffers": json.dumps(buffers)}
            jobs.append((Path(run_dir) / SNAPSHOT_DIR / snapshot_name(step, e.sigma_rel), sd, meta))
        if not background:
            return [write_weights_file(path, sd, meta) for path, sd, meta in jobs]
        if jobs:
            self._writer = self._writer or ThreadPoolExecutor(max_workers=1, thread_name_prefix="ditlab-snapshots")
            self._pending.append(self._writer.submit(
                lambda: [write_weights_file(path, sd, meta) for path, sd, meta in jobs]))
        return [path for path, _, _ in jobs]

    def flush(self) -> None:
        """Wait for the snapshot files written in the background (:meth:`write_snapshots`); a failed write
        raises its CheckpointError, which names the file. The trainer calls it before every checkpoint (a
        checkpoint never lacks the snapshots before it; every way out of the loop but a non-finite step saves
        one first) and when a non-finite step stops the run."""
        pending, self._pending = self._pending, []
        for job in pending:
            job.result()

    def checkpoint_weights(self) -> dict[str, PowerEMA]:
        """{file name: power EMA} for :func:`save_checkpoint`'s ``extra_weights``."""
        return {checkpoint_file(e.sigma_rel): e for e in self.emas}

    def state(self) -> dict:
        """Plain data for the checkpoint's state.pt (the weights go to :meth:`checkpoint_weights`)."""
        return {"sigma_rels": self.sigma_rels, "gammas": [e.gamma for e in self.emas],
                "last_steps": [e.last_step for e in self.emas]}

    def load(self, folder: Path, state: dict) -> None:
        """Continue from a training checkpoint (its ``posthoc_ema`` state and weight files); call
        :func:`check_resume` first."""
        saved = state["posthoc_ema"]
        for e in self.emas:
            i = [sigma_rel_tag(s) for s in saved["sigma_rels"]].index(sigma_rel_tag(e.sigma_rel))
            e.load_state_dict(load_weights(Path(folder) / checkpoint_file(e.sigma_rel)))
            e.last_step = int(saved["last_steps"][i])


def check_resume(sigma_rels, state: dict, folder) -> list[str]:
    """Whether a run with ``sigma_rels`` can continue from a checkpoint's state: a sigma_rel the checkpoint
    has no power EMA for is an error (started now, its average would miss every step before: not the
    profile its snapshots claim). Returns warnings for sigma_rels the checkpoint has and the run drops."""
    saved = (state.get("posthoc_ema") or {}).get("sigma_rels") or []
    have, want = {sigma_rel_tag(s) for s in saved}, {sigma_rel_tag(s) for s in sigma_rels}
    if want - have:
        raise ValueError(f"cannot resume with ema.posthoc_sigma_rels {list(sigma_rels)}: {folder} has power EMAs for "
                         f"{list(saved) or 'none'}, so {sorted(want - have)} would average only the steps after "
                         f"{state['step']}; start a new run or keep the saved ema.posthoc_sigma_rels")
    return [f"ema.posthoc_sigma_rels drops {sorted(have - want)} at step {state['step']}: their snapshots stop there"
            ] if have - want else []


def supersede_snapshots(run_dir, step: int) -> int:
    """Move snapshots of steps after ``step`` (a resumed run redoes them; they belong to the run that was
    cut off) to ``ema_snapshots/superseded/``, so they are kept but never mixed into a reconstruction."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    moved = 0
    for p in sorted(folder.glob("step_*.safetensors")) if folder.is_dir() else []:
        m = _SNAPSHOT.match(p.name)
        if m and int(m.group(1)) > step:
            (folder / SUPERSEDED_DIR).mkdir(exist_ok=True)
            p.replace(folder / SUPERSEDED_DIR / p.name)
            moved += 1
    return moved


# ------------------------------------------------------------------------------ profiles and the solve
def profile_dot(t_a, g_a, t_b, g_b):
    """<p_a, p_b> = integral over tau of p_a(tau) p_b(tau) for power profiles (t, gamma); numpy broadcasts."""
    t_a, g_a, t_b, g_b = (np.asarray(v, dtype=np.float64) for v in (t_a, g_a, t_b, g_b))
    m = np.minimum(t_a, t_b)
    # In logs: t^(gamma + 1) overflows float64 for t ~ 1e6 and gamma ~ 50.
    log = ((g_a + g_b + 1) * np.log(m) - (g_a + 1) * np.log(t_a) - (g_b + 1) * np.log(t_b))
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * np.exp(log)


def solve_posthoc(ts, gammas, t_target: float, gamma_target: float) -> tuple[np.ndarray, float]:
    """Coefficients x of the snapshots (profiles (ts[i], gammas[i])), summing to 1, whose combination is the
    L2-closest to the target profile, and the relative fit error ||sum_i x_i p_i - p_target|| / ||p_target||.

    A target that is one of the snapshots (same t and gamma) is that snapshot exactly (x = e_i, error 0):
    the least-squares solver would return the minimum-norm solution of the nearly singular system, a
    combination equal in profile up to rounding but not in weights, where the copy is exact."""
    ts, gammas = np.asarray(ts, dtype=np.float64), np.asarray(gammas, dtype=np.float64)
    same = np.flatnonzero((ts == t_target) & np.isclose(gammas, gamma_target, rtol=1e-12, atol=0))
    if same.size:
        x = np.zeros(len(ts))
        x[same[0]] = 1.0
        return x, 0.0
    # Times relative to the target's: every inner product scales as 1/t, so this changes no coefficient
    # but keeps the matrix entries O(1).
    ts = ts / t_target
    A = profile_dot(ts[:, None], gammas[:, None], ts[None, :], gammas[None, :])
    b = profile_dot(ts, gammas, 1.0, gamma_target)
    # min ||sum x_i p_i - p_target||^2 subject to sum x_i = 1, by its KKT system [[A, 1], [1', 0]] [x; mu] =
    # [b; 1] (lstsq: A is nearly singular where profiles of neighbouring snapshots overlap)
    n = len(ts)
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n], kkt[:n, n], kkt[n, :n] = A, 1.0, 1.0
    x = np.linalg.lstsq(kkt, np.append(b, 1.0), rcond=None)[0][:n]
    target = float(profile_dot(1.0, gamma_target, 1.0, gamma_target))
    residual = max(target - 2 * float(x @ b) + float(x @ A @ x), 0.0)  # ||sum x_i p_i - p_target||^2
    return x, math.sqrt(residual / target)


# ------------------------------------------------------------------------------ snapshots on disk
@dataclass(frozen=True)
class Snapshot:
    path: Path
    step: int  # trainer step it was written at (the file name)
    ema_step: int  # step of the power EMA's last update: the profile's t
    sigma_rel: float
    gamma: float
    buffers: tuple[str, ...]  # entries copied from the model, not averaged


def read_snapshot_header(path: Path) -> Snapshot:
    """The metadata of one snapshot file; :class:`CheckpointError` naming the file when it is unreadable
    (truncated, not safetensors) or is not a ditlab power-EMA snapshot."""
    try:
        with safe_open(str(path), framework="pt") as f:  # checks the file is as long as its header says
            meta = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"snapshot {path} is unreadable (truncated or corrupt?): {type(e).__name__}: {e}; "
                              "delete it to reconstruct from the others") from e
    try:
        if meta.get("kind") != SNAPSHOT_KIND:
            raise ValueError(f"kind {meta.get('kind')!r}")
        snap = Snapshot(path, int(meta["step"]), int(meta["ema_step"]), float(meta["sigma_rel"]), float(meta["gamma"]),
                        tuple(json.loads(meta["buffers"])))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"snapshot {path} is not a ditlab power-EMA snapshot (metadata {meta}): {e}") from e
    if snapshot_name(snap.step, snap.sigma_rel) != path.name or snap.ema_step < 1 or snap.ema_step > snap.step:
        raise CheckpointError(f"snapshot {path}: its metadata (step {snap.step}, ema_step {snap.ema_step}, sigma_rel "
                              f"{snap.sigma_rel}) does not match its name")
    return snap


def find_snapshots(run_dir, upto: int | None = None) -> list[Snapshot]:
    """Every snapshot of the run up to trainer step ``upto`` (all: None), by step then sigma_rel.

    Errors name the file: an unreadable snapshot, and a missing one (a step that has snapshots of some
    sigma_rels but not of all those the run tracks)."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: train with ema.posthoc_sigma_rels (e.g. [0.05, 0.1]) to "
                                "record power-EMA snapshots (docs/posthoc_ema.md)")
    names = {}
    for p in folder.iterdir():
        if (m := _SNAPSHOT.match(p.name)) and p.is_file() and (upto is None or int(m.group(1)) <= upto):
            names.setdefault(int(m.group(1)), {})[m.group(2)] = p
    if not names:
        raise FileNotFoundError(f"{folder} holds no snapshots" + (f" up to step {upto}" if upto is not None else ""))
    tags = sorted({t for per_step in names.values() for t in per_step})
    snaps = []
    for step in sorted(names):
        for tag in tags:
            if tag not in names[step]:
                raise CheckpointError(f"snapshot {folder / snapshot_name(step, float(tag))} is missing (step {step} has "
                                      f"{', '.join(p.name for p in names[step].values())}); restore it, or move the "
                                      f"other snapshots of step {step} out of {folder}")
            snaps.append(read_snapshot_header(names[step][tag]))
    return snaps


def posthoc_fit_error(checkpoint) -> float:
    """The relative profile fit error a post-hoc EMA checkpoint (:func:`reconstruct`'s) was made with."""
    return float(load_checkpoint(checkpoint)["posthoc_ema"]["fit_error"])


# ------------------------------------------------------------------------------ reconstruction
@dataclass
class Reconstruction:
    sigma_rel: float
    gamma: float
    step: int  # the profile's t: the newest snapshots' ema_step
    fit_error: float  # relative L2 error of the profile fit
    coefficients: list[float]
    snapshots: list[str]  # file names, in the order of coefficients
    weights: dict[str, torch.Tensor] | None = None  # the reconstructed EMA (fp32 parameters, buffers copied)
    checkpoint: Path | None = None  # where it was written


def reconstruct(run_dir, sigma_rels, upto: int | None = None, write: bool = True) -> list[Reconstruction]:
    """EMA weights of each sigma_rel at the newest snapshot step (up to ``upto``) from the run's snapshots,
    written as ``RUN/checkpoints/posthoc_srX`` (``write``). Parameters are summed in float64 one snapshot
    at a time (memory: one float64 copy per requested sigma_rel plus the snapshot being read); entries
    the snapshots copy rather than average (buffers) come from the newest snapshot."""
    run_dir = Path(run_dir)
    targets = [(float(s), gamma_from_sigma_rel(s)) for s in sigma_rels]
    snaps = find_snapshots(run_dir, upto)
    t_target = max(s.ema_step for s in snaps)
    ts, gammas = [s.ema_step for s in snaps], [s.gamma for s in snaps]
    results = []
    for sigma_rel, gamma in targets:
        x, err = solve_posthoc(ts, gammas, t_target, gamma)
        results.append(Reconstruction(sigma_rel, gamma, t_target, err, x.tolist(), [s.path.name for s in snaps]))
    newest = max(snaps, key=lambda s: (s.step, s.ema_step))
    sums: list[dict[str, torch.Tensor]] = [{} for _ in targets]
    reference = None
    for i, snap in enumerate(snaps):
        weights = load_weights(snap.path)  # CheckpointError naming the file if its data is truncated
        if reference is None:
            reference = {k: (v.shape, v.dtype) for k, v in weights.items()}
        elif {k: (v.shape, v.dtype) for k, v in weights.items()} != reference:
            raise CheckpointError(f"snapshot {snap.path} holds other tensors than {snaps[0].path} (another model?)")
        for r, acc in zip(results, sums):
            c = r.coefficients[i]
            for k, v in weights.items():
                if k in snap.buffers or not v.is_floating_point():
                    continue
                acc[k] = acc[k] + c * v.double() if k in acc else c * v.double()
    buffers = load_weights(newest.path)
    for r, acc in zip(results, sums):
        r.weights = {k: (acc[k].float() if k in acc else v) for k, v in buffers.items()}
        if write:
            name = posthoc_checkpoint_name(r.sigma_rel, None if upto is None else r.step)
            note = (f"post-hoc EMA: sigma_rel {r.sigma_rel:g} (gamma {r.gamma:.4f}) at step {r.step}, reconstructed "
                    f"from {len(snaps)} power-EMA snapshots by `ditlab ema`; relative profile fit error {r.fit_error:.2e}")
            state = {"step": r.step, "note": note,
                     "posthoc_ema": {"sigma_rel": r.sigma_rel, "gamma": r.gamma, "fit_error": r.fit_error, "upto": upto,
                                     "snapshots": r.snapshots, "coefficients": r.coefficients}}
            r.checkpoint = save_weights_checkpoint(run_dir / "checkpoints" / name, r.weights, state,
                                                   metadata={"posthoc_sigma_rel": repr(r.sigma_rel)})
    return results

"""Samplers: DDPM ancestral, DDIM(eta), Euler, Heun and DPM-Solver++(2M), over multi-stream time paths.

One signature for all (k-diffusion style): ``sample(denoiser, x, path, schedule, rng, method=...)``.

- ``denoiser(x, t) -> {name: (x0_hat, eps_hat)}`` sees streams and per-stream noise levels (B,).
- ``path`` is a :class:`ditlab.diffusion.paths.TimePath`: for each step, one noise level per stream.
  A stream whose level does not change over a step is left as it is (a clean condition, or the
  low-resolution stream while an L-path finishes the other one). Streams in ``path.hold`` are never
  integrated: "fixed" ones keep their start, "fresh" ones are redrawn as noise before each step.
- Noise comes from a :class:`PerSampleRNG`, so results do not depend on batch composition.

Euler and Heun integrate the probability-flow ODE in rectified-flow coordinates
(x / (alpha + sigma), s = sigma / (alpha + sigma)), where the velocity is eps_hat - x0_hat; for
flow matching that is plain Euler/Heun in t, for DDPM Euler equals DDIM (eta = 0).

dpmpp_2m (ditlab.diffusion.dpm_solver) is a multistep method: it keeps, per stream, the x0_hat and
lambda of that stream's previous step. A stream whose level does not move over a step loses its
history, so it restarts at first order when it moves again (the old x0_hat belongs to another state).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ditlab.diffusion.dpm_solver import dpmpp_2m_update
from ditlab.diffusion.noise import PerSampleRNG
from ditlab.diffusion.paths import TimePath
from ditlab.diffusion.schedules import NoiseSchedule

Denoiser = Callable[[dict, dict], dict]
SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpmpp_2m")


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> broadcastable against a stream: (B, 1, 1, 1) for images, (B, 1, 1) for token sets."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _times(path: TimePath, i: int, batch: int, device) -> dict[str, torch.Tensor]:
    return {name: torch.full((batch,), float(path.times[i, j]), device=device) for j, name in enumerate(path.streams)}


def _ddim_update(x, x0, eps, t, s, schedule, eta, rng):
    """One DDIM step t -> s for one stream; eta = 1 is the DDPM posterior sample."""
    a_t, s_t = (_bcast(v, x) for v in schedule.alpha_sigma(t))
    a_s, s_s = (_bcast(v, x) for v in schedule.alpha_sigma(s))
    if eta > 0:
        # Posterior q(x_s | x_t, x0) variance for a Gaussian path: sigma_{t|s}^2 sigma_s^2 / sigma_t^2.
        a_ts = a_t / a_s.clamp(min=1e-12)
        var_ts = (s_t**2 - a_ts**2 * s_s**2).clamp(min=0)
        std = eta * (var_ts * s_s**2 / (s_t**2).clamp(min=1e-12)).sqrt()
    else:
        std = torch.zeros_like(s_s)
    out = a_s * x0 + (s_s**2 - std**2).clamp(min=0).sqrt() * eps
    if eta > 0:
        out = out + std * rng.randn(*x.shape[1:])
    return out


def _ddpm_update(x, x0, eps, t, s, schedule, rng):
    """Ancestral step: sample the posterior q(x_s | x_t, x0 = x0_hat)."""
    a_t, s_t = (_bcast(v, x) for v in schedule.alpha_sigma(t))
    a_s, s_s = (_bcast(v, x) for v in schedule.alpha_sigma(s))
    a_ts = a_t / a_s.clamp(min=1e-12)
    var_ts = (s_t**2 - a_ts**2 * s_s**2).clamp(min=0)
    st2 = (s_t**2).clamp(min=1e-12)
    mean = a_ts * s_s**2 / st2 * x + a_s * var_ts / st2 * x0
    std = (var_ts * s_s**2 / st2).sqrt()
    return mean + std * rng.randn(*x.shape[1:])


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    x: dict[str, torch.Tensor],
    path: TimePath,
    schedule: NoiseSchedule | dict[str, NoiseSchedule],
    rng: PerSampleRNG,
    method: str = "ddim",
    eta: float = 0.0,
    progress: Optional[Callable] = None,
) -> dict[str, torch.Tensor]:
    """Integrate from the path's first noise levels to its last; returns the final streams (fp32).

    ``x`` holds the starting value of every stream (noise for generated streams, the condition for
    fixed ones). ``progress`` wraps the step range (e.g. tqdm).
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {SAMPLERS}")
    schedules = schedule if isinstance(schedule, dict) else {name: schedule for name in path.streams}
    x = {k: v.float() for k, v in x.items()}
    batch = next(iter(x.values())).shape[0]
    device = next(iter(x.values())).device
    steps = range(path.num_steps)
    history: dict = {}  # dpmpp_2m: stream -> (x0_hat, lambda) of its previous step
    for i in progress(steps) if progress else steps:
        t_cur, t_next = _times(path, i, batch, device), _times(path, i + 1, batch, device)
        moving = [n for j, n in enumerate(path.streams)
                  if path.times[i, j] != path.times[i + 1, j] and n not in path.hold]
        x = _redraw_fresh(x, path, rng)
        pred = denoiser(x, t_cur)
        if method in ("ddim", "ddpm"):
            new = dict(x)
            for n in moving:
                x0, eps = pred[n]
                if method == "ddim":
                    new[n] = _ddim_update(x[n], x0, eps, t_cur[n], t_next[n], schedules[n], eta, rng)
                else:
                    new[n] = _ddpm_update(x[n], x0, eps, t_cur[n], t_next[n], schedules[n], rng)
            x = new
        elif method == "dpmpp_2m":
            new = dict(x)
            for n in path.streams:
                if n not in moving:
                    history.pop(n, None)  # held over this step: restart at first order
            for n in moving:
                new[n], history[n] = dpmpp_2m_update(x[n], pred[n][0], t_cur[n], t_next[n], schedules[n],
                                                     history.get(n))
            x = new
        else:
            x = _ode_step(denoiser, x, pred, t_cur, t_next, moving, schedules, heun=(method == "heun"))
    return x


def _redraw_fresh(x: dict, path: TimePath, rng: PerSampleRNG) -> dict:
    """New standard-normal noise for the streams the path holds "fresh"."""
    fresh = [n for n, how in path.hold.items() if how == "fresh"]
    if not fresh:
        return x
    return {**x, **{n: rng.randn(*x[n].shape[1:]).to(x[n].dtype) for n in fresh}}


def _ode_step(denoiser, x, pred, t_cur, t_next, moving, schedules, heun: bool):
    """Euler (and Heun's correction) in rectified-flow coordinates for the moving streams."""
    coords = {}
    for n in moving:
        c, s = (_bcast(v, x[n]) for v in schedules[n].rf_coords(t_cur[n]))
        c2, s2 = (_bcast(v, x[n]) for v in schedules[n].rf_coords(t_next[n]))
        x0, eps = pred[n]
        coords[n] = (c, s, c2, s2, eps - x0)
    euler = dict(x)
    for n, (c, s, c2, s2, u) in coords.items():
        euler[n] = c2 * (x[n] / c + (s2 - s) * u)
    # Heun's correction needs a second evaluation at the new point; skip it for streams that reach
    # t = 0 (the velocity there is not needed and the step is exact in x0_hat), as EDM does.
    corrected = [n for n in moving if float(t_next[n][0]) > 0]
    if not heun or not corrected:
        return euler
    pred2 = denoiser(euler, t_next)
    out = dict(euler)
    for n in corrected:
        c, s, c2, s2, u = coords[n]
        x0b, epsb = pred2[n]
        out[n] = c2 * (x[n] / c + (s2 - s) * 0.5 * (u + (epsb - x0b)))
    return out


def count_nfe(path: TimePath, method: str) -> int:
    """Network evaluations a sampler spends on a path (CFG doubles the batch, not the count)."""
    n = path.num_steps
    if method == "heun":
        n += sum(1 for i in range(path.num_steps) if any(
            path.times[i, j] != path.times[i + 1, j] and path.times[i + 1, j] > 0 and name not in path.hold
            for j, name in enumerate(path.streams)))
    return n

"""Classifier-free guidance as a small wrapper around a denoiser.

The conditional and unconditional passes run as one batch of 2B. Guidance is applied to every
channel of every predicted stream, in (x0, eps) space; both are affine in the network output for a
fixed x_t, so guiding either is the same as guiding the raw prediction.

Guidance interval (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval improves
sample and distribution quality"): guidance is applied only while the noise-to-signal ratio
sigma/alpha of the noisiest stream lies in (lo, hi]; elsewhere the plain conditional model runs
(one pass, half the cost). Guiding at high noise pushes samples towards class modes and costs
diversity; at low noise it does little. The ratio is process-independent (flow: t / (1 - t)).

Several context sets: compositional guidance (``context_scales``, ``ditlab sample --cfg-context NAME=W``).
With W the global scale (``--cfg``, default 1) and W_i the scale of context set i,

    eps = eps(null) + W * (eps(c) - eps(null)) + sum_i (W_i - 1) * (eps(c) - eps(c without i))

(the same for x0), where
- eps(c): every condition kept (the conditional model);
- eps(null): every condition dropped: the label, every context set to its own learned null, condition
  streams to theirs; the same unconditional pass as plain ``--cfg`` (run only when W != 1);
- eps(c without i): set i dropped to *its own* learned null, everything else kept (run only when W_i != 1).
This is the "leave one out" form of compositional CFG: each set's term is the direction set i adds
given all the others, so W_i = 1 adds nothing and W = 1, all W_i = 1 is the conditional model. With a
single set and no other condition, W_i = w gives eps(null) + w (eps(c) - eps(null)), plain CFG. (Liu et
al. 2022's composable form eps(null) + sum_i w_i (eps(c_i alone) - eps(null)) differs when the sets
interact; the leave-one-out form keeps the conditions nobody named, e.g. the label, in every term.)
All passes run as one batch of (1 + [W != 1] + #{W_i != 1}) * B rows.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

# A conditional denoiser takes (x, t, drop) where drop is a (B,) bool "use the null condition" (every
# condition), or a dict {name: (B,) bool}: "all" (DROP_ALL) drops every condition, a context set's name
# drops that set to its own null; absent keys drop nothing (ditlab.tasks.base, drop_flags).
CondDenoiser = Callable[[dict, dict, "torch.Tensor | dict[str, torch.Tensor]"], dict]
DROP_ALL = "all"


def drop_flags(drop, name: Optional[str] = None) -> torch.Tensor:
    """The (B,) flags of one condition: ``name`` a context set's name, or None for the conditions that
    only "drop everything" drops (the label, condition streams)."""
    if isinstance(drop, torch.Tensor):
        return drop
    flags = drop[DROP_ALL]
    if name is not None and name in drop:
        flags = flags | drop[name]
    return flags


def guided_contexts(denoiser: CondDenoiser, scale: float, context_scales: dict[str, float]
                    ) -> Callable[[dict, dict], dict]:
    """Compositional guidance over context sets (module docstring): ``scale`` W, ``context_scales``
    {set name: W_i}."""
    terms = [name for name, w in context_scales.items() if w != 1.0]
    use_null = scale != 1.0

    def cfg(x, t):
        B = next(iter(x.values())).shape[0]
        device = next(iter(x.values())).device
        k = 1 + use_null + len(terms)
        x2 = {n: torch.cat([v] * k) for n, v in x.items()}
        t2 = {n: torch.cat([v] * k) for n, v in t.items()}
        block = torch.arange(k * B, device=device) // B  # pass of each row: 0 = c, then null, then terms
        drop = {DROP_ALL: (block == 1) if use_null else torch.zeros(k * B, dtype=torch.bool, device=device)}
        for j, name in enumerate(terms):
            drop[name] = block == 1 + use_null + j
        both = denoiser(x2, t2, drop)
        out = {}
        for key, pair in both.items():
            res = []
            for v in pair:  # x0, eps
                parts = v.chunk(k)
                c = parts[0]
                g = c if not use_null else parts[1] + scale * (c - parts[1])
                for j, w in enumerate(context_scales[n] for n in terms):
                    g = g + (w - 1.0) * (c - parts[1 + use_null + j])
                res.append(g)
            out[key] = tuple(res)
        return out

    return cfg


def guided(denoiser: CondDenoiser, scale: float, interval: Optional[tuple[float, float]] = None,
           schedules: Optional[dict] = None, context_scales: Optional[dict[str, float]] = None
           ) -> Callable[[dict, dict], dict]:
    """scale = 1: the conditional model; 0: the unconditional one; > 1: guidance.

    ``interval`` = (lo, hi) limits guidance to noise-to-signal ratios sigma/alpha in (lo, hi];
    ``schedules`` maps stream names to their :class:`NoiseSchedule` (needed with an interval).
    ``context_scales`` {set name: W_i}: compositional guidance per context set (module docstring); the
    denoiser then receives a dict of drop flags.
    """
    if interval is not None:
        lo, hi = interval
        if not 0 <= lo < hi:
            raise ValueError(f"cfg interval must satisfy 0 <= lo < hi, got ({lo}, {hi})")
        if schedules is None:
            raise ValueError("a cfg interval needs the streams' noise schedules")

    def plain(x, t):
        B = next(iter(x.values())).shape[0]
        drop = torch.full((B,), scale == 0.0, dtype=torch.bool, device=next(iter(x.values())).device)
        return denoiser(x, t, drop)

    composed = None
    if context_scales and any(w != 1.0 for w in context_scales.values()):
        composed = guided_contexts(denoiser, scale, context_scales)
    elif scale in (0.0, 1.0):
        return plain

    def in_interval(t) -> bool:
        # All samples of a sampler step share their noise levels, so one host read decides.
        ratio = 0.0
        for name, v in t.items():
            alpha, sigma = schedules[name].alpha_sigma(v.reshape(-1)[:1].float())
            ratio = max(ratio, float(sigma / alpha.clamp(min=1e-12)))
        return lo < ratio <= hi

    def cfg(x, t):
        if interval is not None and not in_interval(t):
            B = next(iter(x.values())).shape[0]
            return denoiser(x, t, torch.zeros(B, dtype=torch.bool, device=next(iter(x.values())).device))
        if composed is not None:
            return composed(x, t)
        B = next(iter(x.values())).shape[0]
        device = next(iter(x.values())).device
        x2 = {k: torch.cat([v, v]) for k, v in x.items()}
        t2 = {k: torch.cat([v, v]) for k, v in t.items()}
        drop = torch.cat([torch.zeros(B, dtype=torch.bool, device=device), torch.ones(B, dtype=torch.bool, device=device)])
        both = denoiser(x2, t2, drop)
        out = {}
        for k, (x0, eps) in both.items():
            x0_c, x0_u = x0.chunk(2)
            eps_c, eps_u = eps.chunk(2)
            out[k] = (x0_u + scale * (x0_c - x0_u), eps_u + scale * (eps_c - eps_u))
        return out

    return cfg

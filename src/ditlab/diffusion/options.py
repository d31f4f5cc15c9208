"""Which combinations of the diffusion options can run: one message naming the key, or None.

``ditlab.config.check_values`` raises it as a ConfigError when a config is loaded, so a bad
combination fails before any data or model is built (formulas and papers: docs/diffusion.md).
The prediction / process pairing itself stays in :func:`ditlab.diffusion.objectives.build_objective`.
"""
from __future__ import annotations

import math
from typing import Optional


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def diffusion_problem(cfg) -> Optional[str]:
    """The first problem of ``cfg.diffusion`` / ``cfg.sample`` options, or None (``cfg``: a ditlab Config)."""
    d, s = cfg.diffusion, cfg.sample
    flow = d.process == "flow"
    if d.loss_space == "velocity" and not flow:
        # A DDPM path has no single "velocity" (v-prediction is a different quantity): say so, don't guess.
        return (f"diffusion.loss_space=velocity applies to diffusion.process=flow only (got diffusion.process="
                f"{d.process}); use diffusion.prediction=v for a velocity-like DDPM target")
    if not (_positive(d.loss_t_min) and d.loss_t_min < 1):
        return f"diffusion.loss_t_min must be in (0, 1), got {d.loss_t_min}"
    if not _positive(d.min_snr_gamma):
        return f"diffusion.min_snr_gamma must be a finite number > 0, got {d.min_snr_gamma}"
    default = type(d)  # the dataclass: its class attributes are the defaults (a default is never an error)
    if d.loss_t_min != default.loss_t_min and not (flow and d.prediction == "x0"):
        # Read only where a flow x0 prediction is divided by t: its eps for the samplers and the velocity loss.
        return (f"diffusion.loss_t_min={d.loss_t_min:g} clamps t where a flow x0 prediction is divided by it, and "
                f"this run has none (got diffusion.process={d.process}, diffusion.prediction={d.prediction}); "
                f"leave it at {default.loss_t_min:g}")
    if d.loss_weighting != "min_snr" and d.min_snr_gamma != default.min_snr_gamma:
        return (f"diffusion.min_snr_gamma={d.min_snr_gamma:g} applies to diffusion.loss_weighting=min_snr only (got "
                f"diffusion.loss_weighting={d.loss_weighting}); set diffusion.loss_weighting=min_snr or leave it at "
                f"{default.min_snr_gamma:g}")
    if d.schedule != default.schedule and flow:
        return (f"diffusion.schedule={d.schedule} (the DDPM betas) applies to diffusion.process=ddpm only (got "
                f"diffusion.process={d.process}: the flow path is x_t = (1 - t) x0 + t eps); leave it at "
                f"{default.schedule}")
    if d.time_sampling != default.time_sampling and not flow:
        return (f"diffusion.time_sampling={d.time_sampling} applies to diffusion.process=flow only (got diffusion."
                f"process={d.process}: DDPM draws integer steps uniformly); leave it at {default.time_sampling}")
    if d.num_timesteps != default.num_timesteps and flow:
        return (f"diffusion.num_timesteps={d.num_timesteps} (DDPM's T) applies to diffusion.process=ddpm only (got "
                f"diffusion.process={d.process}: flow time is continuous; the sampler's grid is sample.steps); "
                f"leave it at {default.num_timesteps}")
    logit_normal = flow and d.time_sampling == "logit_normal"
    for name in ("logit_normal_mean", "logit_normal_std"):
        value, unset = getattr(d, name), getattr(default, name)
        if value != unset and not logit_normal:
            return (f"diffusion.{name}={value:g} applies to diffusion.process=flow with diffusion.time_sampling="
                    f"logit_normal only (got diffusion.process={d.process}, diffusion.time_sampling={d.time_sampling}); "
                    f"leave it at {unset:g}")
    if not 0.0 <= s.eta <= 1.0:
        return f"sample.eta must be in [0, 1] (0 deterministic DDIM, 1 the DDPM posterior), got {s.eta}"
    if s.eta != 0.0 and s.sampler != "ddim":
        # Caught here, not at the first training preview that samples with it.
        return (f"sample.eta={s.eta:g} applies to sample.sampler=ddim only (got sample.sampler={s.sampler}); "
                f"leave it at 0")
    for key, value in (("diffusion.time_shift", d.time_shift), ("sample.time_shift", s.time_shift)):
        if not _positive(value):
            return f"{key} must be a finite number > 0, got {value}"
        if value != 1.0 and not flow:
            return (f"{key}={value:g} applies to diffusion.process=flow only (got diffusion.process={d.process}: "
                    "DDPM times are integer steps); leave it at 1")
    return None

"""Exponential moving average of model weights, the copy diffusion models are sampled from.

The average is kept in fp32 even when the model trains in bf16/fp16: with decay 0.9999 each update
moves the average by 1e-4 of the difference, below bf16's resolution, so a low-precision average
would stop moving. The warm-up ``min(decay, (1+step)/(10+step))`` lets the average forget the random
initialisation quickly early in training instead of dragging it along for ~1/(1-decay) steps.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ditlab.models.wrappers import strip_wrapper_prefix, unwrap_model


def ramped_decay(decay: float, step: int, warmup: bool = True) -> float:
    """The exponential EMA's decay for its update at ``step``: ``decay``, or with the warm-up ramp
    min(decay, (1 + step) / (10 + step)) (module docstring). :class:`EMA` and :func:`classic_sigma_rel` both use it."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


class EMA:
    """fp32 moving average of ``model``'s parameters; buffers are copied, not averaged.

    ``module`` is an eval-mode, grad-free copy usable for sampling. Call :meth:`update` after each
    optimizer step with the same (possibly DDP- or compile-wrapped) model.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay, self.warmup = float(decay), warmup
        self.module = copy.deepcopy(unwrap_model(model)).float().eval().requires_grad_(False)
        for p in self.module.parameters():
            p.grad = None  # deepcopy also copies .grad
        self._params = list(self.module.parameters())
        self._buffers = list(self.module.buffers())

    def decay_at(self, step: int) -> float:
        """Effective decay for an update after optimizer step ``step`` (0-based)."""
        return ramped_decay(self.decay, step, self.warmup)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, hold: torch.Tensor | None = None) -> None:
        """ema <- d * ema + (1 - d) * model for parameters (one fused foreach op); buffers <- model.

        ``hold``: optional 0-d device tensor, 1 = leave the average unchanged. The trainer's
        sync-free non-finite guard uses it so that no host round trip is needed per step.
        """
        src = unwrap_model(model)
        params, buffers = list(src.parameters()), list(src.buffers())
        if len(params) != len(self._params) or len(buffers) != len(self._buffers):
            raise RuntimeError("EMA.update: model structure differs from the one the EMA was built from")
        # Same dtype/device is the common case and costs nothing; otherwise cast (bf16 model, fp32 EMA).
        params = [p if p.dtype == e.dtype and p.device == e.device else p.to(e)
                  for p, e in zip(params, self._params)]
        weight = 1.0 - self.decay_at(step)
        if hold is not None:
            # ema += w * (1 - hold) * (model - ema), with w as a device tensor: no .item() sync.
            diffs = torch._foreach_sub(params, self._params)
            torch._foreach_mul_(diffs, (1.0 - hold.float()) * weight)
            torch._foreach_add_(self._params, diffs)
            for e, b in zip(self._buffers, buffers):
                e.copy_(b)
            return
        try:
            torch._foreach_lerp_(self._params, params, weight)
        except (AttributeError, RuntimeError, TypeError):  # older torch / unsupported dtype
            torch._foreach_mul_(self._params, 1.0 - weight)
            torch._foreach_add_(self._params, params, alpha=weight)
        for e, b in zip(self._buffers, buffers):
            e.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights under plain names (what checkpoints store as ``ema.safetensors``)."""
        return {strip_wrapper_prefix(k): v for k, v in self.module.state_dict().items()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load weights saved by :meth:`state_dict`; wrapper prefixes in ``sd`` are tolerated."""
        self.module.load_state_dict({strip_wrapper_prefix(k): v for k, v in sd.items()}, strict=True)


# ------------------------------------------------------------------------------ power-function EMA
# Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models",
# section 3; docs/posthoc_ema.md). A power-function EMA weighs the weights of training time tau in [0, t]
# by p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1): its length grows with the run, so one sigma_rel
# (the profile's standard deviation relative to t) means the same thing at every point of training.
SIGMA_REL_MAX = 12 ** -0.5  # sigma_rel of gamma = 0, the uniform average over the whole run


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """The exponent gamma whose profile has relative width ``sigma_rel`` (EDM2 eq. 3).

    sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)) is a cubic in gamma:
    s^2 g^3 + 7 s^2 g^2 + (16 s^2 - 1) g + (12 s^2 - 1) = 0. Of its real roots the largest is the one
    with gamma >= 0 (the others lie below -1 and in (-1, 0), where the profile weighs the start of
    training most); it exists for 0 < sigma_rel <= 1/sqrt(12).
    """
    import numpy as np

    s = float(sigma_rel)
    if not 0.0 < s <= SIGMA_REL_MAX:
        raise ValueError(f"sigma_rel must be in (0, {SIGMA_REL_MAX:.4f}] (1/sqrt(12), the uniform average), got {s}")
    s2 = s * s
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    gamma = float(max(r.real for r in roots if abs(r.imag) < 1e-9))
    return max(gamma, 0.0)  # sigma_rel = 1/sqrt(12) can land a rounding error below 0


def sigma_rel_from_gamma(gamma: float) -> float:
    """Inverse of :func:`gamma_from_sigma_rel`: the relative standard deviation of the profile."""
    g = float(gamma)
    return ((g + 1) / ((g + 2) ** 2 * (g + 3))) ** 0.5


def classic_sigma_rel(decay: float, step: int, warmup: bool = True, every: int = 1) -> float:
    """The relative width of the classic EMA (:class:`EMA`, ``ema.decay``) at trainer step ``step``: the standard
    deviation of the training times its average weighs, over ``step``, on the scale of the power EMA's sigma_rel.

    A classic EMA's width is fixed in steps (~sqrt(decay) / (1 - decay), 1,000 at 0.999), so its sigma_rel
    shrinks as the run grows (0.999: ~0.05 at 20,000 steps). Until then the warm-up ramp (1 + s) / (10 + s),
    ~(1 - 1/s)^9, makes it the power EMA of gamma ~8, sigma_rel ~0.09 (0.999: up to step 8,990; without the
    ramp it would be ~0.11 at 9,000 steps). This puts a run's classic EMA beside its post-hoc widths
    (`ditlab ema`). Exact for the trainer's updates: one after every ``every``-th
    step s (1-based, the trainer's count) with weight 1 - decay_at(s), the warm-up ramp included, and the
    initial weights at time 0 keeping what the updates leave of them."""
    import numpy as np

    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    if step < 1 or every < 1:
        raise ValueError(f"classic_sigma_rel: step and every must be >= 1, got step {step}, every {every}")
    updates = range(every, step + 1, every)  # the updates' steps
    times = np.array(updates, dtype=np.float64)
    d = np.array([ramped_decay(float(decay), s, warmup) for s in updates], dtype=np.float64)
    # the model at update k keeps (1 - d_k) times the decays of the updates after it; the start keeps them all
    after = np.exp(np.cumsum(np.log(np.append(d, 1.0))[::-1])[::-1])  # after[k] = prod(d[k:]); after[-1] = 1
    weights = np.append(after[0], (1.0 - d) * after[1:])
    at = np.append(0.0, times) / step
    mean = float(weights @ at) / float(weights.sum())
    return float(np.sqrt(max(float(weights @ (at - mean) ** 2) / float(weights.sum()), 0.0)))


class PowerEMA(EMA):
    """fp32 power-function EMA: ``ema <- beta * ema + (1 - beta) * model`` with
    ``beta = (s / t)^(gamma + 1)``, ``t`` the (1-based) step of this update and ``s`` that of the previous
    one (0 before the first, so the first update copies the model).

    Updated every step, ``beta = (1 - 1/t)^(gamma + 1)`` (EDM2). The general form keeps the closed form
    exact when updates are ``ema.every`` steps apart: unrolled, update k's model gets the weight
    ``(t_k / t)^(gamma + 1) - (t_{k-1} / t)^(gamma + 1)``, the integral of the profile over
    ``(t_{k-1}, t_k]``, i.e. the average is the profile applied to a trajectory held constant between
    updates. Post-hoc reconstruction (ditlab.train.posthoc_ema) relies on that.
    """

    def __init__(self, model: nn.Module, sigma_rel: float):
        super().__init__(model, decay=1.0, warmup=False)
        self.sigma_rel = float(sigma_rel)
        self.gamma = gamma_from_sigma_rel(self.sigma_rel)
        self.last_step = 0  # step of the latest update; the profile's t

    def decay_at(self, step: int) -> float:
        """beta for an update after (1-based) step ``step``."""
        if step <= self.last_step:
            raise ValueError(f"PowerEMA: update at step {step} after one at step {self.last_step}; steps must grow")
        return (self.last_step / step) ** (self.gamma + 1)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, hold: torch.Tensor | None = None) -> None:
        super().update(model, step, hold)
        self.last_step = int(step)

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
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

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

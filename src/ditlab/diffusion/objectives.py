"""The training objective: noise the streams, ask the network, compare with the target.

This is the only module that knows both the network's output parameterisation (eps, x0, v,
velocity) and the noise path. It turns network outputs into (x0_hat, eps_hat) for the samplers,
and returns an unreduced per-sample loss for the trainer.

Noise levels come per stream as (B,) per sample or (B, N_s) per token (one level per patch).
Only tokens with t > 0 carry a loss by default: clean condition / context tokens are inputs.

Options (docs/diffusion.md): flow matching may predict x0 (JiT, Li & He 2025) and take its loss in
velocity space (``loss_space``); ``loss_weighting="min_snr"`` weighs each element by Min-SNR-gamma
(ditlab.diffusion.weighting). The defaults reproduce the plain unweighted loss bitwise.

A stream may follow its own noise schedule (``stream_schedules``, e.g. a low-resolution stream whose
logSNR is shifted so that equal t means equal SNR across scales; ditlab.diffusion.scale_shift); the
others follow ``schedule``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ditlab.diffusion.schedules import NoiseSchedule, build_schedule
from ditlab.diffusion.weighting import min_snr_weight

# flow + eps is left out: x0 = (x_t - t eps) / (1 - t) divides by 0 at t = 1, where sampling starts.
PREDICTIONS = {"ddpm": ("eps", "x0", "v"), "flow": ("velocity", "x0")}
LOSS_SPACES = ("native", "velocity")
LOSS_WEIGHTINGS = ("none", "min_snr")


def expand_time(t: torch.Tensor, x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Noise level (B,) or (B, N) per token -> broadcastable to the stream: an image (B, C, H, W)
    (one level per patch) or a token set (B, N, C)."""
    if t.dim() == 1:
        return t.view(-1, *([1] * (x.dim() - 1)))
    if x.dim() == 3:
        if t.shape != x.shape[:2]:
            raise ValueError(f"per-token noise level has shape {tuple(t.shape)}, expected {tuple(x.shape[:2])}")
        return t[..., None]
    B, _, H, W = x.shape
    g_h, g_w = H // patch_size, W // patch_size
    if t.shape != (B, g_h * g_w):
        raise ValueError(f"per-token noise level has shape {tuple(t.shape)}, expected ({B}, {g_h * g_w})")
    t = t.view(B, 1, g_h, g_w)
    return t.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


def expand_token_mask(mask: torch.Tensor, x: torch.Tensor, patch_size: int) -> torch.Tensor:
    return expand_time(mask.float(), x, patch_size)


class Objective:
    """Prediction parameterisation + noise path."""

    def __init__(self, schedule: NoiseSchedule, prediction: str,
                 stream_schedules: Optional[dict[str, NoiseSchedule]] = None, loss_space: str = "native",
                 loss_t_min: float = 0.05, loss_weighting: str = "none", min_snr_gamma: float = 5.0):
        if loss_space not in LOSS_SPACES:
            raise ValueError(f"diffusion.loss_space must be one of {LOSS_SPACES}, got {loss_space!r}")
        if loss_space == "velocity" and not schedule.terminal_pure_noise:
            raise ValueError("diffusion.loss_space=velocity applies to diffusion.process=flow only")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"diffusion.loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}")
        self.schedule = schedule
        self.prediction = prediction
        self.stream_schedules = dict(stream_schedules or {})
        self.loss_space = loss_space
        self.loss_t_min = loss_t_min  # JiT's clamp of t (= sigma on a flow path) in 1 / t
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = min_snr_gamma

    def schedule_of(self, name: str) -> NoiseSchedule:
        """The noise schedule of stream ``name`` (its own, else the shared one)."""
        return self.stream_schedules.get(name, self.schedule)

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, t_px: torch.Tensor,
               schedule: Optional[NoiseSchedule] = None) -> torch.Tensor:
        alpha, sigma = (schedule or self.schedule).alpha_sigma(t_px)
        return alpha * x0 + sigma * eps

    def target(self, x0, eps, t_px, schedule: Optional[NoiseSchedule] = None):
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        alpha, sigma = (schedule or self.schedule).alpha_sigma(t_px)
        if self.prediction == "v":  # Salimans & Ho: v = alpha eps - sigma x0 (for alpha^2 + sigma^2 = 1)
            return alpha * eps - sigma * x0
        if self.prediction == "velocity":  # rectified flow: d x_t / dt = eps - x0
            return eps - x0
        raise ValueError(f"unknown prediction {self.prediction!r}")

    def to_x0_eps(self, out: torch.Tensor, x_t: torch.Tensor, t_px: torch.Tensor,
                  schedule: Optional[NoiseSchedule] = None):
        """Network output -> (x0_hat, eps_hat), computed in fp32."""
        out, x_t = out.float(), x_t.float()
        alpha, sigma = (schedule or self.schedule).alpha_sigma(t_px)
        if self.prediction == "eps":
            eps = out
            x0 = (x_t - sigma * eps) / alpha.clamp(min=1e-4)
        elif self.prediction == "x0":
            x0 = out
            # Flow paths (JiT): eps_hat = (x_t - (1 - t) x0_hat) / max(t, loss_t_min), the same clamp as the
            # loss; near t = 0 the 1 / t would blow the network's small x0 errors up into eps_hat.
            floor = self.loss_t_min if (schedule or self.schedule).terminal_pure_noise else 1e-4
            eps = (x_t - alpha * x0) / sigma.clamp(min=floor)
        elif self.prediction == "v":
            x0 = alpha * x_t - sigma * out
            eps = sigma * x_t + alpha * out
        elif self.prediction == "velocity":  # x_t = (1 - t) x0 + t eps, v = eps - x0
            x0 = x_t - sigma * out
            eps = x_t + alpha * out
        else:
            raise ValueError(f"unknown prediction {self.prediction!r}")
        return x0, eps

    def denoised(self, out: dict, x_t: dict, t: dict, patch_sizes: dict[str, int]) -> dict:
        """Network outputs of the predicted streams -> {name: (x0_hat, eps_hat)}, for the samplers."""
        return {k: self.to_x0_eps(out[k], x_t[k], expand_time(t[k], x_t[k], patch_sizes[k]), self.schedule_of(k))
                for k in out}

    def loss(
        self,
        net: Callable[[dict, dict], dict],
        x0: dict[str, torch.Tensor],
        t: dict[str, torch.Tensor],
        noise: dict[str, torch.Tensor],
        patch_sizes: dict[str, int],
        loss_mask: Optional[dict[str, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Per-sample mean squared error over the loss-carrying elements, shape (B,).

        ``net(x_t, t)`` maps noised streams and their noise levels to outputs for the predicted
        streams. ``loss_mask`` (name -> (B, N_s) bool) restricts the loss further; by default every
        noised token (t > 0) of every predicted stream counts and clean tokens don't. The mean pools
        the elements of all predicted streams (a bigger stream weighs more); :meth:`stream_losses`
        gives one mean per stream instead.
        """
        sums = self._squared_errors(net, x0, t, noise, patch_sizes, loss_mask)
        total = sum(s for s, _ in sums.values())
        count = sum(c for _, c in sums.values())
        return total / torch.clamp(count, min=1.0)

    def stream_losses(self, net, x0, t, noise, patch_sizes, loss_mask=None) -> dict[str, torch.Tensor]:
        """Like :meth:`loss`, but one per-sample mean (B,) per predicted stream (0 where a sample has
        no loss-carrying element in that stream), for losses that weigh streams, e.g. hi + beta * lo."""
        sums = self._squared_errors(net, x0, t, noise, patch_sizes, loss_mask)
        return {k: total / torch.clamp(count, min=1.0) for k, (total, count) in sums.items()}

    def _squared_errors(self, net, x0, t, noise, patch_sizes, loss_mask):
        """{stream: (summed weighted squared error (B,), number of loss-carrying elements (B,))}."""
        t_px = {k: expand_time(t[k], x0[k], patch_sizes[k]) for k in x0}
        x_t = {k: self.noised(x0[k], noise[k], t_px[k], self.schedule_of(k)) for k in x0}
        out = net(x_t, t)
        sums = {}
        for k, pred in out.items():
            weight = (t_px[k] > 0).float()
            if loss_mask is not None and k in loss_mask:
                weight = weight * expand_token_mask(loss_mask[k], x0[k], patch_sizes[k])
            weight = weight.expand_as(x0[k])
            err = self._error(pred, x0[k], noise[k], t_px[k], self.schedule_of(k)) ** 2
            if self.loss_weighting == "min_snr":
                err = err * self._snr_weight(t_px[k], self.schedule_of(k))
            sums[k] = ((err * weight).flatten(1).sum(1), weight.flatten(1).sum(1))
        return sums

    def _error(self, pred, x0, eps, t_px, schedule):
        """Elementwise (prediction - target) in the space the loss compares (``loss_space``)."""
        if self.loss_space == "velocity" and self.prediction == "x0":
            # JiT: v_hat = (x_t - x0_hat) / t against v = (x_t - x0) / t = eps - x0 (x_t - x0 = t (eps - x0)
            # on a flow path), both with t clamped at loss_t_min, so v_hat - v = (x0 - x0_hat) / max(t, t_min).
            # Written as the difference directly: x_t cancels exactly instead of in floating point.
            _, sigma = schedule.alpha_sigma(t_px)
            return (pred.float() - x0.float()) / sigma.clamp(min=self.loss_t_min)
        # native, or a velocity prediction (whose native loss already is the velocity loss)
        return pred.float() - self.target(x0, eps, t_px, schedule).float()

    def _snr_weight(self, t_px, schedule):
        """Min-SNR-gamma weight of the compared quantity (the velocity in loss_space=velocity)."""
        compared = "velocity" if self.loss_space == "velocity" else self.prediction
        alpha, sigma = schedule.alpha_sigma(t_px)
        return min_snr_weight(alpha, sigma, compared, self.min_snr_gamma)


def build_objective(diffusion_cfg) -> Objective:
    prediction = diffusion_cfg.prediction
    if diffusion_cfg.process == "flow" and prediction == "v":
        prediction = "velocity"  # the flow-matching velocity is the natural "v" of a linear path
    allowed = PREDICTIONS[diffusion_cfg.process]
    if prediction not in allowed:
        raise ValueError(f"diffusion.prediction={diffusion_cfg.prediction!r} does not fit diffusion.process="
                         f"{diffusion_cfg.process!r}; choose one of {allowed}")
    return Objective(build_schedule(diffusion_cfg), prediction, loss_space=diffusion_cfg.loss_space,
                     loss_t_min=diffusion_cfg.loss_t_min, loss_weighting=diffusion_cfg.loss_weighting,
                     min_snr_gamma=diffusion_cfg.min_snr_gamma)

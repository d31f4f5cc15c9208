"""Noise paths x_t = alpha(t) * x0 + sigma(t) * eps on t in [0, 1], t = 0 clean.

Both processes share this continuous-time view, so one set of samplers serves both:
- DDPM: T discrete steps; t = k / T for k = 1..T during training (exactly the discrete DDPM), and
  alpha_bar between grid points interpolated linearly in log alpha_bar.
- Flow matching (rectified flow): alpha = 1 - t, sigma = t.

Every Gaussian path is a rescaled rectified flow: x_t / (alpha + sigma) = (1 - s) x0 + s eps with
s = sigma / (alpha + sigma). The ODE samplers integrate in that (x / (alpha + sigma), s) frame, which
is the identity for flow matching and, for DDPM, makes Euler equal to DDIM (as in k-diffusion).
"""
from __future__ import annotations

import math

import torch


class NoiseSchedule:
    """Base class: subclasses define alpha_sigma(t) and how training times are drawn."""

    #: whether the path reaches alpha = 0 at t = 1 (pure noise) — true for flow matching only
    terminal_pure_noise: bool = False

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def sample_time(self, shape, device, generator=None) -> torch.Tensor:
        raise NotImplementedError

    def time_grid(self, steps: int) -> torch.Tensor:
        """Default sampling grid: steps + 1 decreasing times from the start time to 0."""
        raise NotImplementedError

    def to(self, device) -> "NoiseSchedule":
        """Move any lookup tables to ``device`` ahead of time (outside compiled / graphed code)."""
        return self

    def rf_coords(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale c = alpha + sigma, rectified-flow time s = sigma / c)."""
        alpha, sigma = self.alpha_sigma(t)
        c = alpha + sigma
        return c, sigma / c


def shift_time(t, shift: float):
    """SD3's resolution shift t' = s t / (1 + (s - 1) t) (Esser et al. 2024): a monotone warp of [0, 1]
    fixing 0 and 1; s > 1 moves every t towards noise (for flow matching it multiplies sigma/alpha by s).
    Works on tensors and floats."""
    return shift * t / (1 + (shift - 1) * t)


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    # The DDPM paper's schedule, defined for T = 1000 and rescaled so other T keep the same path.
    scale = 1000 / num_timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    # Nichol & Dhariwal (2021): alpha_bar(t) = cos^2(((t + s) / (1 + s)) * pi / 2), betas clipped.
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


class DDPMSchedule(NoiseSchedule):
    def __init__(self, kind: str = "linear", num_timesteps: int = 1000):
        if kind == "linear":
            betas = linear_betas(num_timesteps)
        elif kind == "cosine":
            betas = cosine_betas(num_timesteps)
        else:
            raise ValueError(f"diffusion.schedule must be 'linear' or 'cosine', got {kind!r}")
        self.kind = kind
        self.num_timesteps = num_timesteps
        self.betas = betas
        # log alpha_bar at k = 0..T (k = 0 is clean data, alpha_bar = 1).
        self.log_alpha_bar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])
        self._cache: dict[torch.device, torch.Tensor] = {}

    def _table(self, device) -> torch.Tensor:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            # "cuda" and "cuda:0" must be one key: the trainer fills the cache for "cuda" ahead of
            # time, tensors report "cuda:0", and a table created inside a CUDA-graphed step is
            # overwritten by the next replay (reduce-overhead mode failed on exactly that).
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._cache:
            self._cache[device] = self.log_alpha_bar.to(device=device, dtype=torch.float32)
        return self._cache[device]

    def to(self, device) -> "DDPMSchedule":
        self._table(device)
        return self

    def alpha_sigma(self, t):
        table = self._table(t.device)
        k = t.float().clamp(0, 1) * self.num_timesteps
        k0 = k.floor().clamp(max=self.num_timesteps - 1)
        frac = k - k0
        k0 = k0.long()
        log_ab = torch.lerp(table[k0], table[k0 + 1], frac)
        alpha_bar = log_ab.exp()
        return alpha_bar.sqrt(), (1 - alpha_bar).clamp(min=0).sqrt()

    def sample_time(self, shape, device, generator=None):
        k = torch.randint(1, self.num_timesteps + 1, shape, device=device, generator=generator)
        return k.float() / self.num_timesteps

    def time_grid(self, steps: int) -> torch.Tensor:
        # "Trailing" spacing: starts at k = T (the training distribution's noisiest step), ends at 0.
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be in [1, {self.num_timesteps}] for a {self.num_timesteps}-step DDPM, got {steps}")
        k = torch.round(torch.linspace(self.num_timesteps, 0, steps + 1, dtype=torch.float64))
        return (k / self.num_timesteps).float()


class FlowSchedule(NoiseSchedule):
    terminal_pure_noise = True

    def __init__(self, time_sampling: str = "uniform", mean: float = 0.0, std: float = 1.0, shift: float = 1.0,
                 train_shift: float = 1.0):
        if time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"diffusion.time_sampling must be 'uniform' or 'logit_normal', got {time_sampling!r}")
        self.time_sampling, self.mean, self.std = time_sampling, mean, std
        self.shift = shift  # sampling-grid shift: t' = shift t / (1 + (shift - 1) t), >1 spends steps at high noise
        self.train_shift = train_shift  # the same map on training times (diffusion.time_shift)

    def alpha_sigma(self, t):
        t = t.float()
        return 1 - t, t

    def sample_time(self, shape, device, generator=None):
        if self.time_sampling == "uniform":
            u = torch.rand(shape, device=device, generator=generator)
        else:
            u = torch.sigmoid(self.mean + self.std * torch.randn(shape, device=device, generator=generator))
        if self.train_shift != 1.0:  # only when set, so that the default draws stay bitwise the old ones
            u = shift_time(u, self.train_shift)
        # Keep t strictly inside (0, 1): t = 0 would train on an unnoised input with a zero target weight.
        return u.clamp(1e-5, 1.0)

    def time_grid(self, steps: int) -> torch.Tensor:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        return shift_time(t, self.shift).float()


def build_schedule(diffusion_cfg) -> NoiseSchedule:
    if diffusion_cfg.process == "ddpm":
        if diffusion_cfg.time_shift != 1.0:  # the config check says so first; for direct callers
            raise ValueError("diffusion.time_shift applies to diffusion.process=flow only (DDPM draws integer steps)")
        return DDPMSchedule(diffusion_cfg.schedule, diffusion_cfg.num_timesteps)
    if diffusion_cfg.process == "flow":
        return FlowSchedule(diffusion_cfg.time_sampling, diffusion_cfg.logit_normal_mean, diffusion_cfg.logit_normal_std,
                            train_shift=diffusion_cfg.time_shift)
    raise ValueError(f"diffusion.process must be 'ddpm' or 'flow', got {diffusion_cfg.process!r}")

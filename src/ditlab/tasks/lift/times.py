"""How a LIFT training step draws its two noise levels (t_hi, t_lo) per sample (lift.train_mode).

- independent: two independent draws from the schedule's training distribution;
- diagonal: t_lo = t_hi (what a model sampled only on the diagonal needs);
- clean_lo: t_lo = 0, the super-resolution case (the clean stream carries no loss);
- mixture: each sample picks one of four relations, with the lift.mix_* probabilities:
  lo_ahead (t_lo <= t_hi: the smaller of two draws, the region a lo-first sampler walks through),
  independent, lo_noise (t_lo = 1: the high resolution alone) and hi_noise (t_hi = 1: the low
  resolution alone, what the first leg of an L-path needs).

All draws come from torch's global RNG, like the rest of a training step (resume stays exact).
"""
from __future__ import annotations

import torch

from ditlab.diffusion.schedules import NoiseSchedule

TRAIN_MODES = ("independent", "diagonal", "clean_lo", "mixture")
MIXTURE_PARTS = ("lo_ahead", "independent", "lo_noise", "hi_noise")


def mixture_weights(lift_cfg) -> torch.Tensor:
    """The mix_* probabilities in MIXTURE_PARTS order, normalised; errors name the bad key."""
    raw = [float(getattr(lift_cfg, f"mix_{part}")) for part in MIXTURE_PARTS]
    for part, w in zip(MIXTURE_PARTS, raw):
        if w < 0:
            raise ValueError(f"lift.mix_{part} must be >= 0, got {w}")
    if sum(raw) <= 0:
        raise ValueError("lift.train_mode=mixture needs at least one positive lift.mix_* weight")
    w = torch.tensor(raw, dtype=torch.float64)
    return w / w.sum()


def draw_lift_times(mode: str, batch: int, schedule: NoiseSchedule, device,
                    weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_hi (B,), t_lo (B,)) for one training batch."""
    t_hi = schedule.sample_time((batch,), device)
    if mode == "independent":
        return t_hi, schedule.sample_time((batch,), device)
    if mode == "diagonal":
        return t_hi, t_hi.clone()
    if mode == "clean_lo":
        return t_hi, torch.zeros_like(t_hi)
    if mode != "mixture":
        raise ValueError(f"lift.train_mode must be one of {TRAIN_MODES}, got {mode!r}")
    if weights is None or weights.shape != (len(MIXTURE_PARTS),):
        raise ValueError(f"lift.train_mode=mixture needs {len(MIXTURE_PARTS)} weights ({', '.join(MIXTURE_PARTS)})")
    other = schedule.sample_time((batch,), device)
    part = torch.multinomial(weights.float().to(device), batch, replacement=True)  # (B,) index into MIXTURE_PARTS
    one = torch.ones_like(t_hi)
    # Each candidate is computed for the whole batch and the part picks per sample: no host sync.
    hi_choices = torch.stack([torch.maximum(t_hi, other), t_hi, t_hi, one])  # (4, B)
    lo_choices = torch.stack([torch.minimum(t_hi, other), other, one, other])
    pick = part[None]
    return hi_choices.gather(0, pick)[0], lo_choices.gather(0, pick)[0]

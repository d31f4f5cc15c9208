"""PSNR of super-resolution outputs against their originals, with the plain upsampling baseline.

PSNR is computed per image on uint8 pixels (peak 255) and averaged over images (averaging dB,
as SR papers do). The baseline upsamples the same low-resolution input bilinearly: a sampler that
invents plausible detail usually scores *below* the blurry baseline on PSNR (a distortion metric
rewards the posterior mean, not a sample), so both numbers are reported together with FID.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr_per_image(samples: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) pairs -> (N,) PSNR in dB (inf for identical images)."""
    if samples.shape != originals.shape:
        raise ValueError(f"samples have shape {tuple(samples.shape)} but the originals {tuple(originals.shape)}")
    mse = (samples.double() - originals.double()).square().flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse)


def upsampled_baseline(originals: torch.Tensor, factor: int) -> torch.Tensor:
    """The factor x average-pooled input upsampled bilinearly back to full size, as uint8."""
    low = F.avg_pool2d(originals.float(), factor)
    up = F.interpolate(low, scale_factor=factor, mode="bilinear", align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8)


def sr_psnr_report(samples: torch.Tensor, originals: torch.Tensor, factor: int) -> dict:
    p = psnr_per_image(samples, originals)
    b = psnr_per_image(upsampled_baseline(originals, factor), originals)
    finite = p[torch.isfinite(p)]
    return {"n": len(p), "psnr_db": finite.mean().item() if len(finite) else float("inf"),
            "psnr_std_db": finite.std().item() if len(finite) > 1 else 0.0,
            "identical_images": len(p) - len(finite), "bilinear_psnr_db": b[torch.isfinite(b)].mean().item(),
            "factor": factor}

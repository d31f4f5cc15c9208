"""The super-resolution network: a low-resolution condition stream before the target image stream."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ditlab.models.dit import DiT, StreamSpec, build_dit, parse_arch

TARGET, COND = "image", "lowres"


def superres_streams(image_size: int, channels: int, arch: str, factor: int) -> list[StreamSpec]:
    _, _, _, patch = parse_arch(arch)
    low = image_size // factor
    if image_size % factor or low % patch:
        raise ValueError(f"image size {image_size} with task.factor={factor} gives a {low}-pixel condition, "
                         f"which the patch size {patch} of {arch} does not divide")
    # Condition first, as in the note (64 condition tokens before 256 target tokens).
    return [StreamSpec(COND, channels, low, patch, predict=False, pos_scale=float(factor)),
            StreamSpec(TARGET, channels, image_size, patch)]


def build_superres_model(model_cfg, image_size: int, channels: int, factor: int) -> DiT:
    return build_dit(model_cfg, superres_streams(image_size, channels, model_cfg.arch, factor))


def downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """The low-resolution view: factor x factor average pooling (in model range)."""
    return F.avg_pool2d(images, factor)

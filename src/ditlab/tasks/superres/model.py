"""The super-resolution network: a low-resolution condition stream before the target image stream."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ditlab.models.control import ConditionedDiT
from ditlab.models.dit import DiT, StreamSpec, dit_kwargs, parse_arch

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


def build_superres_model(model_cfg, image_size: int, channels: int, factor: int, task_cfg=None) -> DiT:
    """The network; ``task_cfg`` (task.cond_injection / cond_blocks / branch_blocks) chooses how the
    condition reaches the target (ditlab.models.control). The default, tokens, is today's DiT exactly."""
    injection = getattr(task_cfg, "cond_injection", "tokens")
    if injection != "tokens" and getattr(task_cfg, "cond_mode", "real") == "dummy":
        raise ValueError(f"task.cond_mode=dummy (unconditional pretraining in the token layout) needs "
                         f"task.cond_injection=tokens, got task.cond_injection={injection}; pretrain a "
                         "task.kind=image run for the other modes")
    return ConditionedDiT(
        superres_streams(image_size, channels, model_cfg.arch, factor), COND, injection,
        cond_blocks=getattr(task_cfg, "cond_blocks", "all"), branch_blocks=getattr(task_cfg, "branch_blocks", 0),
        **dit_kwargs(model_cfg))  # the size and every model.* option (SwiGLU, RMSNorm, skips, class tokens)


def downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """The low-resolution view: factor x factor average pooling (in model range)."""
    return F.avg_pool2d(images, factor)

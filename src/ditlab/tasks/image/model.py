"""The image task's network: one image stream, optionally class-conditional and cross-attending to a context set."""
from __future__ import annotations

from typing import Optional

import torch

from ditlab.models.dit import ContextSpec, DiT, StreamSpec, build_dit, parse_arch
from ditlab.models.wrappers import unwrap_model

STREAM = "image"


def image_stream(image_size: int, channels: int, arch: str, name: str = STREAM) -> StreamSpec:
    _, _, _, patch = parse_arch(arch)
    if image_size % patch:
        raise ValueError(f"image size {image_size} is not divisible by the patch size {patch} of {arch}")
    return StreamSpec(name, channels, image_size, patch)


def build_image_model(model_cfg, image_size: int, channels: int = 3, context_dim: Optional[int] = None,
                      contexts: Optional[list[ContextSpec]] = None) -> DiT:
    """``context_dim``: width of the context set's embeddings (None: no cross-attention); ``contexts``:
    named sets (data.contexts + model.contexts)."""
    return build_dit(model_cfg, [image_stream(image_size, channels, model_cfg.arch)], context_dim, contexts)


def model_num_classes(model: torch.nn.Module) -> int:
    """Classes of a class-conditional DiT (0 when it has no label embedding)."""
    embed = unwrap_model(model).label_embed
    return embed.num_classes if embed is not None else 0

"""The plain network inside the wrappers training puts around it (DDP, DataParallel, torch.compile).

Task code reads a network's streams and embeddings through :func:`unwrap_model`; it lives with the
models (not with the trainer that adds the wrappers) so that tasks need nothing from ``train/``.
"""
from __future__ import annotations

from torch import nn

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # state-dict name prefixes those wrappers add


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel / torch.compile wrappers, so names and copies are the plain model's."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefix(name: str) -> str:
    """``module._orig_mod.blocks.0.w`` -> ``blocks.0.w`` (leading wrapper prefixes only)."""
    while name.startswith(WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name

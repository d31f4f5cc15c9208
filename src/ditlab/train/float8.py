"""float8 training of the transformer's token-wise linear layers (train.float8, issue 17), through torchao.

What is converted: the nn.Linear layers inside attention (qkv / q / kv / proj) and the MLPs (fc1 / fc2,
SwiGLU's gate_value / out) whose in and out widths are multiples of 16 (fp8 GEMMs need it). These are
the GEMMs with one row per token. Everything else keeps its precision: the adaLN modulation and the
timestep / label / pooled-condition MLPs (one row per sample: nothing to gain), the patch embedding, the
final layer, the optimizer state, the master weights and the EMA.

The conversion swaps modules in place and keeps the same Parameter objects, so the state dict, the
optimizer, the EMA and checkpoints are unchanged: a float8 run's checkpoint loads into a plain model, and
sampling never uses fp8. Call it after the EMA copy (the EMA module stays plain) and before torch.compile.

Not part of the speed targets of issue 17 (they compare bf16 with bf16): an option, measured once.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

RECIPES = ("tensorwise", "rowwise")
FLOAT8_MODES = ("off",) + RECIPES
MIN_CAPABILITY = (8, 9)  # fp8 tensor cores: Ada, Hopper and later


def float8_candidates(model: nn.Module) -> tuple[list[str], list[str]]:
    """(converted, skipped) qualified names of the Linear children of every Attention / Mlp / SwiGLU: the
    token-wise linears whose widths are / are not multiples of 16."""
    from ditlab.models.attention import Attention
    from ditlab.models.mlp import Mlp, SwiGLU

    converted, skipped = [], []
    for name, parent in model.named_modules():
        if not isinstance(parent, (Attention, Mlp, SwiGLU)):
            continue
        for child_name, child in parent.named_children():
            if type(child) is nn.Linear:
                ok = child.in_features % 16 == 0 and child.out_features % 16 == 0
                (converted if ok else skipped).append(f"{name}.{child_name}" if name else child_name)
    return converted, skipped


def check_float8(mode: str, device: torch.device | str) -> None:
    """Errors that name the key: an unknown mode, torchao missing, a GPU without fp8 tensor cores."""
    if mode not in FLOAT8_MODES:
        raise ValueError(f"train.float8 must be one of {', '.join(FLOAT8_MODES)}, got {mode!r}")
    if mode == "off":
        return
    try:
        import torchao.float8  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"train.float8={mode} needs torchao (pip install 'ditlab[float8]'): {e}") from None
    device = torch.device(device)
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        if cap < MIN_CAPABILITY:
            raise RuntimeError(
                f"train.float8={mode} needs fp8 tensor cores (compute capability >= 8.9); "
                f"{torch.cuda.get_device_name(device)} has {cap[0]}.{cap[1]}: use train.float8=off")
    # On the CPU torchao emulates the scaled GEMMs: the same numerics, no speed (the tests run there).


def convert_float8(model: nn.Module, mode: str, device: torch.device | str) -> list[str]:
    """Convert the token-wise linears of ``model`` to torchao's Float8Linear (recipe ``mode``) in place;
    returns the converted names ([] for off). Raises (check_float8) before touching the model."""
    check_float8(mode, device)
    if mode == "off":
        return []
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    converted, _ = float8_candidates(model)
    wanted = set(converted)
    if not wanted:
        raise ValueError(f"train.float8={mode}: this model has no linear layer with widths divisible by 16 to "
                         "convert; use train.float8=off")
    # pad_inner_dim: CUDA's scaled GEMM needs every inner dimension divisible by 16, and the weight gradient's
    # is the rows of a step (local batch x tokens: 257 with one class token, 33 for ICL, any context length);
    # torchao pads it instead of failing in the first backward.
    config = dataclasses.replace(Float8LinearConfig.from_recipe_name(mode), pad_inner_dim=True)
    convert_to_float8_training(model, config=config, module_filter_fn=lambda mod, fqn: fqn in wanted)
    return converted

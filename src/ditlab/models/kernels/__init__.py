"""Fused adaLN kernels for DiT blocks (issue 17): Triton on CUDA, the eager PyTorch reference elsewhere.

    adaln_modulate(x, shift, scale, index)                -> LN(x) * (1 + scale) + shift
    gate_residual_adaln(x, branch, gate, shift, scale, index) -> (x', LN(x') * (1 + scale) + shift),
                                                              x' = x + gate * branch
    block_mlp(mlp, x)                                     -> the block's MLP (GELU or SwiGLU); with
                                                              DITLAB_MLP_GEMM=triton DiT's GELU inside Triton
                                                              GEMMs (mlp_triton)

Modulation tensors are (B, G, D) (or (B, D), taken as G = 1); token n uses group index[n], or 0 when
G == 1, or n when G == N (see ``reference``). The Triton path runs for CUDA tensors when Triton is
installed (``triton_available``); everything else takes the reference path, which is the same
mathematics as DiTBlock's eager code.

``train.fast_kernels`` (auto | on | off) picks the path of a model's blocks: ``configure_fast_kernels``
(called by the trainer) resolves it for a device and sets it on every module that has a
``fast_kernels`` attribute (DiTBlock, FinalLayer). off keeps today's code path exactly.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ditlab.models.kernels.reference import (adaln_modulate_ref, gate_residual_adaln_ref, gather_groups,
                                             modulate)
from ditlab.models.mlp import Mlp
from ditlab.models.token_groups import Index, index_tensor

__all__ = ["adaln_modulate", "gate_residual_adaln", "adaln_modulate_ref", "gate_residual_adaln_ref",
           "gather_groups", "modulate", "block_mlp", "triton_available", "resolve_fast_kernels",
           "configure_fast_kernels", "set_fast_kernels", "fast_kernels_on", "fused_unsupported", "FAST_KERNEL_MODES",
           "MLP_GEMM_MODES", "FastKernelsUnavailable"]

FAST_KERNEL_MODES = ("auto", "on", "off")
# The fused blocks' MLP (measurement only, like the adaln_triton knobs, until a GPU run shows it pays): cublas
# (cuBLAS GEMMs, GELU and its backward as Inductor kernels) or triton (GELU in the epilogues of Triton GEMMs:
# ditlab.models.kernels.mlp_triton).
MLP_GEMM = os.environ.get("DITLAB_MLP_GEMM", "cublas")
MLP_GEMM_MODES = ("cublas", "triton")


def _load_triton() -> bool:
    """Whether the Triton kernels can run here (CUDA build of torch with a GPU, Triton importable)."""
    if not torch.cuda.is_available():
        return False
    try:
        from ditlab.models.kernels import adaln_triton  # noqa: F401  (registers the ops)
    except ImportError:
        return False
    try:  # loaded here, outside any compiled region; a failure leaves the adaLN kernels on and raises at use
        from ditlab.models.kernels import mlp_triton  # noqa: F401
    except ImportError:
        pass
    return True


_TRITON: Optional[bool] = None


def triton_available() -> bool:
    global _TRITON
    if _TRITON is None:
        _TRITON = _load_triton()
    return _TRITON


def _as_groups(t: torch.Tensor) -> torch.Tensor:
    return t[:, None] if t.dim() == 2 else t


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda and triton_available()


def _prepare(x, mods, index):
    """Triton-path arguments: (B, G, D) modulation; a large index gathers to per-token modulation first. The
    kernels take the index tensor (of a TokenGroups too: they sum per group without atomics themselves)."""
    mods = [_as_groups(m) for m in mods]
    index = index_tensor(index)
    if index is not None:
        from ditlab.models.kernels.adaln_triton import MAX_INDEX_GROUPS

        if mods[0].shape[1] > MAX_INDEX_GROUPS:  # e.g. the per-token groups of a slice of the sequence
            mods, index = [m[:, index] for m in mods], None
        else:
            index = index.to(device=x.device, dtype=torch.int32)
    return mods, index


def _out_dtype(shift: torch.Tensor) -> torch.dtype:
    # The modulation's dtype: bf16 under autocast (the adaLN Linear's output), which the next layer (a
    # Linear) casts its input to anyway; fp32 in an fp32 model.
    return shift.dtype


def adaln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                   index: Index = None) -> torch.Tensor:
    """LayerNorm(x) (no affine, eps 1e-6) * (1 + scale) + shift, fused on CUDA."""
    if not _use_triton(x):
        return adaln_modulate_ref(x, _as_groups(shift), _as_groups(scale), index)
    (shift, scale), index = _prepare(x, (shift, scale), index)
    y, _, _, _ = torch.ops.ditlab.adaln_fwd(x.contiguous(), None, None, shift, scale, index, _out_dtype(shift))
    return y


def gate_residual_adaln(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor, shift: torch.Tensor,
                        scale: torch.Tensor, index: Index = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + gate * branch, LayerNorm(that) * (1 + scale) + shift), fused on CUDA."""
    if not _use_triton(x):
        return gate_residual_adaln_ref(x, branch, _as_groups(gate), _as_groups(shift), _as_groups(scale), index)
    (gate, shift, scale), index = _prepare(x, (gate, shift, scale), index)
    y, xnew, _, _ = torch.ops.ditlab.adaln_fwd(x.contiguous(), branch.contiguous(), gate, shift, scale, index,
                                               _out_dtype(shift))
    return xnew, y


def block_mlp(mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` inside a fused block. For DiT's GELU MLP (ditlab.models.mlp.Mlp) with DITLAB_MLP_GEMM=triton on
    CUDA, one Triton GEMM computes fc1 with the GELU in its epilogue and the backward's fc2 GEMM applies GELU's
    derivative in its epilogue (mlp_triton). Every other case is the module itself: a SwiGLU's silu(gate) *
    value is one elementwise kernel under torch.compile, and a GEMM epilogue for it would meet the GELU one's
    result at K = 384 (slower than cuBLAS, BENCHMARKS.md)."""
    if MLP_GEMM not in MLP_GEMM_MODES:
        raise ValueError(f"DITLAB_MLP_GEMM must be one of {', '.join(MLP_GEMM_MODES)}, got {MLP_GEMM!r}")
    if MLP_GEMM == "triton" and isinstance(mlp, Mlp) and _use_triton(x):
        from ditlab.models.kernels.mlp_triton import gelu_mlp as fused

        return fused(x, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
    return mlp(x)


class FastKernelsUnavailable(ValueError, RuntimeError):
    """``on`` where CUDA or Triton is missing: a setting the user gave (a ValueError, so the command line reports
    it in one line), and a RuntimeError as it has always been."""


def _said(name: str, value: str) -> str:
    """How a user writes the setting: ``train.fast_kernels=on`` (a config key) or ``--fast-kernels on`` (a flag)."""
    return f"{name} {value}" if name.startswith("--") else f"{name}={value}"


def resolve_fast_kernels(mode: str, device: torch.device | str, name: str = "train.fast_kernels") -> bool:
    """train.fast_kernels for a device: auto -> on where CUDA and Triton are present; on without them
    is an error naming the key (``name``: the config key or the flag that gave ``mode``); off -> False
    (today's eager code path)."""
    if mode not in FAST_KERNEL_MODES:
        raise ValueError(f"{name} must be one of {', '.join(FAST_KERNEL_MODES)}, got {mode!r}")
    if mode == "off":
        return False
    device = torch.device(device)
    ok = device.type == "cuda" and triton_available()
    if mode == "on" and not ok:
        why = "the device is not CUDA" if device.type != "cuda" else "Triton is not installed"
        raise FastKernelsUnavailable(f"{_said(name, 'on')} needs a CUDA device and Triton ({why}: device "
                                     f"{device}); use {_said(name, 'auto')} or off")
    return ok


def set_fast_kernels(model: torch.nn.Module, enabled: bool) -> int:
    """Switch the fused path on every module of ``model`` that has one; returns how many were set."""
    count = 0
    for m in model.modules():
        if hasattr(m, "fast_kernels"):
            m.fast_kernels = bool(enabled)
            count += 1
    return count


def fast_kernels_on(model: torch.nn.Module) -> bool:
    """Whether any module of ``model`` takes the fused path (what set_fast_kernels / configure_fast_kernels set)."""
    return any(getattr(m, "fast_kernels", False) for m in model.modules())


def fused_unsupported(model: torch.nn.Module) -> list[str]:
    """The model settings the fused path cannot compute (e.g. model.norm=rmsnorm), from the modules'
    ``fused_unsupported`` attribute (DiTBlock, FinalLayer)."""
    return sorted({u for m in model.modules() for u in getattr(m, "fused_unsupported", ())})


def configure_fast_kernels(model: torch.nn.Module, mode: str, device: torch.device | str,
                           name: str = "train.fast_kernels") -> bool:
    """Resolve train.fast_kernels for ``device`` and set it on ``model``; returns whether it is on.
    A model setting the kernels do not support is an error naming both keys under ``on`` and keeps the
    eager path under ``auto`` (checked before the device, so the error comes on any machine). ``name``: the
    config key or flag the mode came from, for the messages."""
    unsupported = fused_unsupported(model)
    if unsupported and mode == "on":
        raise ValueError(f"{_said(name, 'on')}: the fused adaLN kernels support only model.norm=layernorm, "
                         f"this model has {', '.join(unsupported)}; use {_said(name, 'auto')} "
                         "(the eager path for this model) or off")
    enabled = resolve_fast_kernels(mode, device, name) and not unsupported
    set_fast_kernels(model, enabled)
    return enabled

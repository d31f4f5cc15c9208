"""Where the kernel tests can run: ``gpu`` (a CUDA GPU with Triton: the compiled kernels) and ``interp`` (Triton
installed and ``TRITON_INTERPRET=1``: the same kernels through Triton's interpreter on CPU tensors, as
``make test-kernels`` runs them); everything else runs the reference path only. Plus the error measure the
kernel tests share."""
from __future__ import annotations

import os

import pytest
import torch

from ditlab.models import kernels

HAS_CUDA_TRITON = kernels.triton_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
try:
    if INTERPRET:  # register the ops for CPU tensors (on a GPU, kernels.triton_available() has done it)
        from ditlab.models.kernels import adaln_triton, mlp_triton  # noqa: F401
    HAS_INTERPRETER = INTERPRET
except ImportError:
    HAS_INTERPRETER = False

gpu = pytest.mark.skipif(not HAS_CUDA_TRITON, reason="needs a CUDA GPU and Triton")
interp = pytest.mark.skipif(not HAS_INTERPRETER, reason="needs Triton and TRITON_INTERPRET=1")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; a must be finite."""
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()

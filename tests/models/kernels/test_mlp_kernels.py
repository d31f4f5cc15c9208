"""DiT's GELU MLP with the GELU inside Triton GEMMs (ditlab.models.kernels.mlp_triton, DITLAB_MLP_GEMM=triton)
against the eager module: output and every gradient, odd shapes.

Where they run: on a CUDA GPU with Triton, fp32 and bf16 at the issue-17 widths (every autotuner config is
benchmarked there, so the fc1 bias gradient's row-tile sums are checked after configs of different tile
heights ran); on the CPU with ``TRITON_INTERPRET=1`` and Triton installed, the same kernels through Triton's
interpreter in fp32 and fp16 (the interpreter has no bf16; fp16 exercises the same roundings: pre and dh are
rounded to the compute dtype before GELU and its derivative, as the unfused path rounds them); everywhere, the
knob's validation and its CPU fallback. None of these tests is timing-based.
"""
from __future__ import annotations

import pytest
import torch

from ditlab.models import kernels
from ditlab.models.mlp import Mlp

from tests.models.kernels.where import HAS_CUDA_TRITON, HAS_INTERPRETER, gpu, interp, rel_err


def make_mlp(D: int, H: int, seed: int = 0) -> Mlp:
    torch.manual_seed(seed)
    mlp = Mlp(D, H)
    with torch.no_grad():  # biases away from zero, so that both bias gradients and the bias add are checked
        mlp.fc1.bias.normal_(0, 0.5)
        mlp.fc2.bias.normal_(0, 0.5)
    return mlp


def grads_of(mlp: Mlp, x: torch.Tensor, fn, weight: torch.Tensor):
    """(output, dx, [dW1, db1, dW2, db2]) of fn(mlp, x) under the loss sum(out * weight)."""
    mlp.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = fn(mlp, x)
    (out.float() * weight).sum().backward()
    return out.detach(), x.grad, [p.grad for p in (mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)]


def check(shape, D, H, dtype, device, fused, autocast=False, tol=None):
    mlp = make_mlp(D, H).to(device)
    x = (torch.randn(*shape, D, generator=torch.Generator().manual_seed(1)) * 1.5).to(device)
    weight = torch.randn(*shape, D, generator=torch.Generator().manual_seed(2)).to(device)
    if not autocast:
        mlp, x = mlp.to(dtype), x.to(dtype)
    ctx = torch.autocast(device, dtype=dtype, enabled=autocast)
    with ctx:
        out, dx, dp = grads_of(mlp, x, fused, weight)
    # Reference: the eager module in fp64 on the same (rounded) weights and inputs.
    ref_mlp = make_mlp(D, H).to(device)
    ref_mlp.load_state_dict(mlp.state_dict())
    ref_out, ref_dx, ref_dp = grads_of(ref_mlp.double(), x.double(), lambda m, v: m(v), weight.double())
    assert out.dtype == dtype, out.dtype
    assert dx.dtype == x.dtype and all(g.dtype == p.dtype for g, p in zip(dp, mlp.parameters()))
    tol = tol or (1e-5 if dtype == torch.float32 else 1.5e-2)
    for name, a, b in zip(["y", "dx", "dW1", "db1", "dW2", "db2"], [out, dx, *dp], [ref_out, ref_dx, *ref_dp]):
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert rel_err(a, b) < tol, (name, rel_err(a, b))


def fused_call(mlp, x):
    from ditlab.models.kernels.mlp_triton import gelu_mlp

    return gelu_mlp(x, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)


# ---- CPU: the kernels through Triton's interpreter -----------------------------------------------------
@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape,D,H", [((1, 37), 24, 72), ((2, 20), 40, 100), ((3, 16), 32, 128)],
                         ids=["37x24x72", "2x20x40x100", "3x16x32x128"])
def test_kernels_interpreter(shape, D, H, dtype):
    # Widths and token counts that are not multiples of the interpreter's 16 x 32 x 16 tiles: every mask.
    check(shape, D, H, dtype, "cpu", fused_call, tol=1e-5 if dtype == torch.float32 else 3e-3)


@interp
def test_fc1_bias_gradient_sums_every_row_tile():
    """db1 is the sum of dpre over all rows, reduced from one partial row per row tile: with 70 rows and tiles of
    16 every slot holds part of it, and a gradient that is the same for every row makes each slot's share
    visible (a lost or doubled tile would be off by 1 / 5 of the total)."""
    from ditlab.models.kernels.mlp_triton import gemm_dgelu

    M, K, N = 70, 16, 40
    dy = torch.ones(M, K)
    w2 = torch.full((K, N), 0.25)
    pre = torch.zeros(M, N)  # gelu'(0) = 0.5, so dpre = 16 * 0.25 * 0.5 = 2 everywhere
    dpre, db1 = gemm_dgelu(dy, w2, pre)
    torch.testing.assert_close(dpre, torch.full((M, N), 2.0))
    torch.testing.assert_close(db1, torch.full((N,), 2.0 * M))


# ---- everywhere: the knob -------------------------------------------------------------------------------
def test_knob_is_validated_and_falls_back_to_the_module_off_cuda(monkeypatch):
    mlp = make_mlp(8, 32)
    x = torch.randn(2, 5, 8)
    monkeypatch.setattr(kernels, "MLP_GEMM", "cutlass")
    with pytest.raises(ValueError, match="DITLAB_MLP_GEMM must be one of cublas, triton, got 'cutlass'"):
        kernels.block_mlp(mlp, x)
    for mode in kernels.MLP_GEMM_MODES:  # on the CPU both are the module itself, exactly
        monkeypatch.setattr(kernels, "MLP_GEMM", mode)
        torch.testing.assert_close(kernels.block_mlp(mlp, x), mlp(x), rtol=0, atol=0)


def test_swiglu_never_takes_the_gelu_gemms(monkeypatch):
    """DITLAB_MLP_GEMM=triton is GELU's epilogue: a SwiGLU stays its own module even where the Triton GEMMs run."""
    from ditlab.models.mlp import make_mlp as make_block_mlp

    swiglu = make_block_mlp("swiglu", 8, 4.0)
    x = torch.randn(2, 5, 8)
    monkeypatch.setattr(kernels, "MLP_GEMM", "triton")
    monkeypatch.setattr(kernels, "_use_triton", lambda t: True)
    torch.testing.assert_close(kernels.block_mlp(swiglu, x), swiglu(x), rtol=0, atol=0)


# ---- GPU ------------------------------------------------------------------------------------------------
GPU_SHAPES = [((1, 77), 384, 1536), ((2, 320), 768, 3072), ((3, 256), 1152, 4608), ((5, 77), 384, 1000)]


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape,D,H", GPU_SHAPES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_kernels_gpu(shape, D, H, dtype):
    # fp32 through tl.dot may use TF32 on the tensor cores: 1e-3, as the GEMMs of an fp32 model with TF32 on.
    check(shape, D, H, dtype, "cuda", fused_call, tol=1e-3 if dtype == torch.float32 else 1.5e-2)


@gpu
def test_autocast_casts_like_a_linear_and_keeps_fp32_gradients():
    # fp32 master weights under bf16 autocast: bf16 output, fp32 gradients, as the eager module gives.
    check((2, 256), 384, 1536, torch.bfloat16, "cuda", fused_call, autocast=True)


@gpu
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_fused_block_with_the_triton_mlp_matches_the_module(monkeypatch, compiled):
    """A whole model on the fused path (train.fast_kernels) with DITLAB_MLP_GEMM=triton, bf16 autocast, eager and
    under torch.compile (the op traced as a custom op), against the same model with cuBLAS + GELU."""
    from tests.models.kernels.test_fused_blocks import CASES, inputs, run_model, tiny

    mkw, ikw = CASES["superres"]
    model = tiny(hidden=384, heads=6, noise=0.02, **mkw).cuda()
    kernels.set_fast_kernels(model, True)
    x, t, kw = inputs(mkw["streams"], device="cuda", **ikw)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16)
    with ctx:
        off, g_off = run_model(model, x, t, kw)
    monkeypatch.setattr(kernels, "MLP_GEMM", "triton")
    net = torch.compile(model) if compiled else model
    with ctx:
        on, g_on = run_model(net, x, t, kw)
    assert rel_err(on, off) < 2e-2
    for name in g_off:
        assert rel_err(g_on[name], g_off[name]) < 5e-2, (name, rel_err(g_on[name], g_off[name]))


@pytest.mark.skipif(not (HAS_INTERPRETER or HAS_CUDA_TRITON), reason="needs Triton: a CUDA GPU or TRITON_INTERPRET=1")
def test_ops_pass_opcheck():
    """Schema, fake (meta) implementations, autograd registration and AOT dispatch: what torch.compile relies on."""
    dev = "cuda" if HAS_CUDA_TRITON else "cpu"
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dev)

    args = [t.requires_grad_() for t in (rand(20, 16), rand(48, 16), rand(48), rand(16, 48), rand(16))]
    torch.library.opcheck(torch.ops.ditlab.gelu_mlp_fwd.default, args)
    x, w1, _, w2, _ = (t.detach() for t in args)
    torch.library.opcheck(torch.ops.ditlab.gelu_mlp_bwd.default, (rand(20, 16), x, rand(20, 48), rand(20, 48), w1, w2))


@interp
@pytest.mark.parametrize("case", ["image", "superres", "named_sets", "class_tokens_rope", "long_skips", "routed",
                                  "swiglu_long_skips"])
def test_whole_models_through_the_interpreter_with_every_kernel(case, monkeypatch):
    """The fused path with the Triton kernels for adaLN and the MLP (DITLAB_MLP_GEMM=triton), run through the
    interpreter on the CPU (the kernels' CUDA gate opened), against the eager model: the integration the GPU tests
    check, in fp32, so that CI's interpreter runs cover it: shapes, the token -> group map, every gradient."""
    from ditlab.models.kernels import mlp_triton
    from tests.models.kernels.test_fused_blocks import CASES, inputs, run_model, tiny

    mkw, ikw = CASES[case]
    model = tiny(noise=0.02, **mkw)
    x, t, kw = inputs(mkw["streams"], **ikw)
    off, g_off = run_model(model, x, t, kw)
    kernels.set_fast_kernels(model, True)
    monkeypatch.setattr(kernels, "_use_triton", lambda t: True)
    monkeypatch.setattr(kernels, "MLP_GEMM", "triton")
    calls = []
    real = mlp_triton.gelu_mlp
    monkeypatch.setattr(mlp_triton, "gelu_mlp", lambda *a: calls.append(1) or real(*a))
    on, g_on = run_model(model, x, t, kw)
    # both blocks' GELU MLPs took the Triton GEMMs; a SwiGLU stays its own module between the adaLN kernels
    assert len(calls) == (0 if mkw.get("mlp") == "swiglu" else 2)
    assert rel_err(on, off) < 1e-5
    assert g_on.keys() == g_off.keys()
    for name in g_off:
        assert rel_err(g_on[name], g_off[name]) < 1e-4, (name, rel_err(g_on[name], g_off[name]))

"""DiT's GELU MLP with the GELU inside Triton GEMMs (issue 17's "GELU in the fc1 GEMM's epilogue").

    y = fc2(gelu_tanh(fc1(x)))

Unfused, the MLP's elementwise work is two passes over the (M, H) hidden activations besides the GEMMs:
GELU forward (read the pre-activation, write h) and GELU backward (read dh and the pre-activation, write
dpre, and sum dpre over the rows for fc1's bias gradient). Here:
- forward: one Triton GEMM computes pre = x W1^T + b1 and, in its epilogue, h = gelu(pre); both are stored
  (the backward needs pre for GELU's derivative and h for fc2's weight gradient, as unfused). fc2 stays a
  cuBLAS addmm. Saves one read of pre.
- backward: one Triton GEMM computes dh = dy W2 and, in its epilogue, dpre = dh * gelu'(pre) and this tile's
  column sums of dpre (fc1's bias gradient, reduced over the row tiles afterwards: no atomics, so the result
  does not depend on scheduling). dh never reaches memory. Saves a write and two reads of (M, H).
The other GEMMs of the backward (dW2, dW1, dx) are cuBLAS.

The arithmetic follows the unfused path: pre is rounded to the compute dtype before GELU (as the GEMM's
bf16 output would be), GELU and its derivative run in fp32 (as Inductor's kernels do), dh is rounded to
the compute dtype before the derivative multiplies it. Only the GEMM's fp32 summation order differs.

Measurement-only until a GPU run shows it pays: ``DITLAB_MLP_GEMM=triton`` (ditlab.models.kernels) turns
it on inside the fused blocks (train.fast_kernels); the default keeps cuBLAS + Inductor's GELU.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)  # Triton reads globals only as constexpr
GELU_C = tl.constexpr(0.044715)

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Hopper-sized tiles; the autotuner picks per (M, N, K)
# on the first call. The interpreter (CPU tests) gets one small config: it runs every program in Python.
# K is the model width (384 at S/2): only 3-6 steps along K per tile, so deep K tiles are among them.
_CONFIGS = ((128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 128, 64, 4, 4), (64, 128, 64, 4, 4),
            (128, 64, 64, 4, 4), (128, 128, 128, 8, 2), (256, 128, 64, 8, 3))
_INTERP_CONFIGS = ((16, 32, 16, 4, 1),)
CONFIGS = _INTERP_CONFIGS if INTERPRET else _CONFIGS


def _configs():
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for m, n, k, w, s in CONFIGS]


@triton.jit
def _tanh(u):
    # tanh through exp (fp32); |u| is clamped at 15, where tanh is +-1 in fp32, so exp never overflows.
    u = tl.minimum(tl.maximum(u, -15.0), 15.0)
    return 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)


# reset_to_zero: the benchmarked configs write the row-tile sums of their own BLOCK_M; PART is zeroed again
# before the chosen config runs, so rows the chosen config does not write stay zero.
@triton.autotune(configs=_configs(), key=["M", "N", "K", "MODE"], reset_to_zero=["PART"])
@triton.jit
def _gemm_gelu_kernel(A, B, BIAS, PRE, OUT, PART, M, N, s_am, s_ak, s_bk, s_bn, K: tl.constexpr,
                      MODE: tl.constexpr, IEEE: tl.constexpr, HAS_BIAS: tl.constexpr, GROUP_M: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc = A (M, K) @ B (K, N) in fp32, then
    MODE 0 (forward):  PRE = round(acc + BIAS); OUT = gelu(PRE)
    MODE 1 (backward): OUT = round(round(acc) * gelu'(PRE)); PART[pid_m, :] = column sums of OUT
    PRE, OUT: (M, N) contiguous; PART: (cdiv(M, BLOCK_M), N) fp32. K (the model width) is a compile-time
    constant: one specialisation per width, and a loop bound Triton's interpreter can iterate over. IEEE: fp32
    inputs multiplied in full fp32, where torch's own fp32 GEMMs would not use TF32."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row tiles share the B column tiles while they are in L2.
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    a_ptr = A + rm.to(tl.int64)[:, None] * s_am + rk[None, :] * s_ak
    b_ptr = B + rk[:, None] * s_bk + rn[None, :] * s_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        if K % BLOCK_K == 0:  # every model width of the presets: no mask along K
            a = tl.load(a_ptr, mask=m_ok[:, None], other=0.0)
            b = tl.load(b_ptr, mask=n_ok[None, :], other=0.0)
        else:
            k_ok = (kt * BLOCK_K + rk) < K
            a = tl.load(a_ptr, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptr, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptr += BLOCK_K * s_ak
        b_ptr += BLOCK_K * s_bk
    mask = m_ok[:, None] & n_ok[None, :]
    offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
    if MODE == 0:
        if HAS_BIAS:
            acc += tl.load(BIAS + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        pre = acc.to(PRE.dtype.element_ty)
        tl.store(PRE + offs, pre, mask=mask)
        p = pre.to(tl.float32)
        h = 0.5 * p * (1.0 + _tanh(SQRT_2_OVER_PI * (p + GELU_C * p * p * p)))
        tl.store(OUT + offs, h.to(OUT.dtype.element_ty), mask=mask)
    else:
        dh = acc.to(OUT.dtype.element_ty).to(tl.float32)
        p = tl.load(PRE + offs, mask=mask, other=0.0).to(tl.float32)
        th = _tanh(SQRT_2_OVER_PI * (p + GELU_C * p * p * p))
        dgelu = 0.5 * (1.0 + th) + 0.5 * p * (1.0 - th * th) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * p * p)
        dpre = (dh * dgelu).to(OUT.dtype.element_ty)
        tl.store(OUT + offs, dpre, mask=mask)
        col = tl.sum(tl.where(mask, dpre.to(tl.float32), 0.0), axis=0)
        tl.store(PART + pid_m.to(tl.int64) * N + rn, col, mask=n_ok)


def _ieee(t: torch.Tensor) -> bool:
    # fp32 GEMMs follow torch's setting (cuBLAS uses TF32 only where it is allowed); bf16 / fp16 ignore it.
    return t.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32


def _grid(M: int, N: int):
    return lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)


def _part_rows(M: int) -> int:
    # Enough row slots for the smallest BLOCK_M any config may use; unused slots stay zero.
    smallest = min(c[0] for c in CONFIGS)
    return triton.cdiv(M, smallest)


def gemm_gelu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre, h): pre = x w^T + b (x (M, K), w (N, K)), h = gelu_tanh(pre), both in x's dtype."""
    M, K = x.shape
    N = w.shape[0]
    pre = torch.empty((M, N), dtype=x.dtype, device=x.device)
    h = torch.empty_like(pre)
    _gemm_gelu_kernel[_grid(M, N)](x, w, b if b is not None else x, pre, h, pre, M, N,
                                   x.stride(0), x.stride(1), w.stride(1), w.stride(0), K=K,
                                   MODE=0, IEEE=_ieee(x), HAS_BIAS=b is not None, GROUP_M=8)
    return pre, h


def gemm_dgelu(dy: torch.Tensor, w2: torch.Tensor, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dpre, db1): dpre = (dy w2) * gelu'(pre) (dy (M, K), w2 (K, N), pre (M, N)), db1 = dpre summed over rows
    (fp32)."""
    M, K = dy.shape
    N = w2.shape[1]
    dpre = torch.empty((M, N), dtype=dy.dtype, device=dy.device)
    part = torch.zeros((_part_rows(M), N), dtype=torch.float32, device=dy.device)
    _gemm_gelu_kernel[_grid(M, N)](dy, w2, dy, pre, dpre, part, M, N,
                                   dy.stride(0), dy.stride(1), w2.stride(0), w2.stride(1), K=K,
                                   MODE=1, IEEE=_ieee(dy), HAS_BIAS=False, GROUP_M=8)
    return dpre, part.sum(0)


@torch.library.custom_op("ditlab::gelu_mlp_fwd", mutates_args=())
def gelu_mlp_fwd(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, pre, h) for x (M, D), all tensors in one dtype; pre and h are kept for the backward."""
    pre, h = gemm_gelu(x.contiguous(), w1, b1)
    return torch.addmm(b2, h, w2.t()), pre, h


@gelu_mlp_fwd.register_fake
def _fake_fwd(x, w1, b1, w2, b2):
    M, H = x.shape[0], w1.shape[0]
    return x.new_empty((M, w2.shape[0])), x.new_empty((M, H)), x.new_empty((M, H))


@torch.library.custom_op("ditlab::gelu_mlp_bwd", mutates_args=())
def gelu_mlp_bwd(dy: torch.Tensor, x: torch.Tensor, pre: torch.Tensor, h: torch.Tensor, w1: torch.Tensor,
                 w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dw1, db1, dw2, db2)."""
    dy = dy.contiguous()
    dpre, db1 = gemm_dgelu(dy, w2, pre)
    dw2 = dy.t().mm(h)
    db2 = dy.sum(0)
    dw1 = dpre.t().mm(x)
    dx = dpre.mm(w1)
    return dx, dw1, db1.to(dy.dtype), dw2, db2


@gelu_mlp_bwd.register_fake
def _fake_bwd(dy, x, pre, h, w1, w2):
    return (x.new_empty(x.shape), w1.new_empty(w1.shape), w1.new_empty((w1.shape[0],)), w2.new_empty(w2.shape),
            w2.new_empty((w2.shape[0],)))


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2 = inputs
    _, pre, h = output
    ctx.save_for_backward(x.contiguous(), pre, h, w1, w2)


def _backward(ctx, dy, dpre_unused, dh_unused):
    x, pre, h, w1, w2 = ctx.saved_tensors
    return gelu_mlp_bwd(dy, x, pre, h, w1, w2)


gelu_mlp_fwd.register_autograd(_backward, setup_context=_setup_context)


def gelu_mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
             ) -> torch.Tensor:
    """fc2(gelu_tanh(fc1(x))) for x (..., D), in the dtype autocast would run the Linears in (else x's).
    Custom ops are not cast by autocast, so the inputs are cast here, as autocast casts a Linear's."""
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    y, _, _ = gelu_mlp_fwd(x.reshape(-1, x.shape[-1]).to(dtype), w1.to(dtype), b1.to(dtype), w2.to(dtype),
                           b2.to(dtype))
    return y.reshape(*x.shape[:-1], y.shape[-1])

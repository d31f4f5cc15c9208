"""Triton kernels, forward and backward, for adaLN-modulated LayerNorm, as torch custom ops.

Two ops, registered as ``torch.library.custom_op``s (torch.compile traces each as one opaque node and
AOTAutograd uses the registered backward). DITLAB_ADALN_OP=triton_op registers them with
``torch.library.triton_op`` instead (Inductor sees the Triton kernels and launches them from its own
code). Measured on one H200 (docs/performance.md), neither pays at DiT-S/2; custom_op gave DiT-B/2 +6%,
triton_op -8%:

- ``ditlab::adaln_fwd`` with no residual: y = LN(x) * (1 + scale) + shift;
- ``ditlab::adaln_fwd`` with a residual: x' = x + gate * branch, y = LN(x') * (1 + scale) + shift
  (the gate and residual of one sub-layer fused with the next sub-layer's LayerNorm + modulate).

Each reads its tensors once and writes its outputs once; every sum runs in fp32. Modulation tensors
are (B, G, D) views (e.g. chunks of the adaLN output, any strides with a unit last stride); the group
of token n is 0 (G == 1, per-sample), n (per-token, G == N) or index[n] (several streams). The gather
happens inside the kernels, so a multi-stream model never materialises a (B, N, 9D) modulation tensor.

The backward sums d(shift), d(scale), d(gate) over the tokens of each group in registers; each program
owns a slot of a partial-sum buffer (no contended atomics: the result does not depend on scheduling),
and the slots are summed afterwards. Reference mathematics: ditlab.models.kernels.reference.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ditlab.models.kernels.reference import EPS

# Rows per backward program: its partial sums are flushed once per program (per group change).
ROWS_PER_PROGRAM = int(os.environ.get("DITLAB_ADALN_ROWS", "64"))
# Elements of one [rows, D] tile, and the backward's warps (0: as the forward). Tuning knobs
# (docs/performance.md): with DITLAB_ADALN_OP=triton_op, 2048 / 32 rows / 8 warps and these defaults
# measured the same end to end (DiT-S/2 and DiT-B/2, one H200).
TILE = int(os.environ.get("DITLAB_ADALN_TILE", "4096"))
BWD_WARPS = int(os.environ.get("DITLAB_ADALN_BWD_WARPS", "0"))
# How the backward accumulates d(shift) / d(scale) / d(gate) over its rows: "row" reduces each tile over its
# rows at once (a cross-warp reduction per tile and sum); "tile" adds whole tiles into [tile rows, D] accumulators
# and reduces once per flush (more registers, fewer reductions); "auto": tile up to AUTO_TILE_MAX_D, row above.
# Kernel alone on an H100 (tenth session, graph replay): tile is 18-30% faster at D = 384, 9-24% slower at
# D = 768. End to end under CUDA graphs (H100, eleventh session) auto gained 2.2% at S/2 and 2.6% at superres
# S/2 over row, so auto is the default (D > 512, e.g. B/2, keeps row). Same sums up to fp32 summation order.
BWD_ACC = os.environ.get("DITLAB_ADALN_BWD_ACC", "auto")
BWD_ACC_MODES = ("row", "tile", "auto")
AUTO_TILE_MAX_D = 512
# Software-pipelining stages of the backward's row loop (0: Triton's default for the launch, 3 on CUDA).
BWD_STAGES = int(os.environ.get("DITLAB_ADALN_BWD_STAGES", "0"))
# The launch's num_stages above pipelines only loads that feed a tl.dot, so it never touched this loop (the
# tenth session measured no change). tl.range(num_stages=S) on the loop itself asks Triton to pipeline its
# other loads too: S row tiles' loads in flight at once. 0: the plain loop (today's kernel). "auto": per case, the
# depth that won the kernels-alone sweep (fifteenth session, H100, graph replay, BENCHMARKS.md) - see
# loop_stages_for; it becomes the default only once an end-to-end pair shows the gain.
_LOOP_ENV = os.environ.get("DITLAB_ADALN_BWD_LOOP_STAGES", "0")
BWD_LOOP_STAGES: int | str = _LOOP_ENV if _LOOP_ENV == "auto" else int(_LOOP_ENV)
# Beyond this many groups with an index, the modulation is gathered to tokens first (per-token mode).
MAX_INDEX_GROUPS = 16


@triton.jit
def _adaln_fwd_kernel(X, BR, GATE, SHIFT, SCALE, IDX, Y, XNEW, MEAN, RSTD,
                      N, D, eps, s_gb, s_gg, s_sb, s_sg, s_cb, s_cg,
                      HAS_RES: tl.constexpr, GMODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    nmask = n < N
    dmask = d < D
    mask = nmask[:, None] & dmask[None, :]
    rows = b * N + n
    offs = rows[:, None] * D + d[None, :]
    if GMODE == 0:
        g = (n * 0).to(tl.int64)
    elif GMODE == 1:
        g = n.to(tl.int64)
    else:
        g = tl.load(IDX + n, mask=nmask, other=0).to(tl.int64)
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        br = tl.load(BR + offs, mask=mask, other=0.0).to(tl.float32)
        if GMODE == 0:  # one modulation row per sample: one [D] load broadcast over the tile's rows
            gt = tl.load(GATE + b * s_gb + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
        else:
            gt = tl.load(GATE + b * s_gb + g[:, None] * s_gg + d[None, :], mask=mask, other=0.0).to(tl.float32)
        xn = (x + gt * br).to(XNEW.dtype.element_ty)
        tl.store(XNEW + offs, xn, mask=mask)
        x = xn.to(tl.float32)  # normalise the stored (rounded) residual, as the eager path does
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / D
    rstd = 1.0 / tl.sqrt(var + eps)
    if GMODE == 0:
        sh = tl.load(SHIFT + b * s_sb + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
        sc = tl.load(SCALE + b * s_cb + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    else:
        sh = tl.load(SHIFT + b * s_sb + g[:, None] * s_sg + d[None, :], mask=mask, other=0.0).to(tl.float32)
        sc = tl.load(SCALE + b * s_cb + g[:, None] * s_cg + d[None, :], mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * (1.0 + sc) + sh
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=nmask)
    tl.store(RSTD + rows, rstd, mask=nmask)


@triton.jit
def _fold_rows(c, ACC_M: tl.constexpr):
    """A tile's contribution to a [ACC_M, D] accumulator: summed over its rows (ACC_M == 1) or whole."""
    if ACC_M == 1:
        return tl.sum(c, axis=0)[None, :]
    else:
        return c


@triton.jit
def _adaln_bwd_kernel(XN, BR, GATE, SCALE, IDX, MEAN, RSTD, DY, DXN, DX, DBR, PSH, PSC, PGT,
                      N, D, P, s_gb, s_gg, s_cb, s_cg, G: tl.constexpr,
                      HAS_RES: tl.constexpr, HAS_DXN: tl.constexpr, GMODE: tl.constexpr, ROWS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ACC_M: tl.constexpr,
                      LOOP_STAGES: tl.constexpr):
    # Partial sums: GMODE 0 / 2 -> PSH[b, p, g, :] (fp32, this program's slot); GMODE 1 -> PSH[b, n, :].
    # Accumulators are [ACC_M, BLOCK_D]: ACC_M = 1 reduces each tile over its rows as it goes (BWD_ACC "row"),
    # ACC_M = BLOCK_M adds whole tiles and reduces once per flush ("tile").
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    acc_sh = tl.zeros([ACC_M, BLOCK_D], dtype=tl.float32)
    acc_sc = tl.zeros([ACC_M, BLOCK_D], dtype=tl.float32)
    acc_gt = tl.zeros([ACC_M, BLOCK_D], dtype=tl.float32)
    n0 = p * ROWS
    if GMODE == 2:
        # A program whose rows all belong to one group (a stream of a multi-stream model, away from its edges:
        # all of them when the streams' lengths are multiples of ROWS) runs as the per-sample case does: that
        # group's modulation rows loaded once, no per-tile gather or group test.
        n_all = n0 + tl.arange(0, ROWS)
        g_all = tl.load(IDX + n_all, mask=n_all < N, other=0).to(tl.int64)
        g_first = tl.min(tl.where(n_all < N, g_all, 2**62), axis=0)
        uniform = g_first == tl.max(tl.where(n_all < N, g_all, -1), axis=0)
        cur_g = g_first
    else:
        cur_g = (n0 * 0).to(tl.int64)
    slot = (b * P + p) * G
    if GMODE != 1:  # one modulation row per sample (or the program's first group): loaded once, not per tile row
        sc_row = tl.load(SCALE + b * s_cb + cur_g * s_cg + d, mask=dmask, other=0.0).to(tl.float32)
        if HAS_RES:
            gt_row = tl.load(GATE + b * s_gb + cur_g * s_gg + d, mask=dmask, other=0.0).to(tl.float32)
    for i in tl.range(0, ROWS, BLOCK_M, num_stages=LOOP_STAGES):  # LOOP_STAGES None: the plain loop
        n = n0 + i + tl.arange(0, BLOCK_M)
        nmask = n < N
        mask = nmask[:, None] & dmask[None, :]
        rows = b * N + n
        offs = rows[:, None] * D + d[None, :]
        if GMODE == 0:
            g = (n * 0).to(tl.int64)
        elif GMODE == 1:
            g = n.to(tl.int64)
        else:
            g = tl.load(IDX + n, mask=nmask, other=0).to(tl.int64)
        x = tl.load(XN + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=nmask, other=0.0)
        rstd = tl.load(RSTD + rows, mask=nmask, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        if GMODE == 0:
            wdy = dy * (1.0 + sc_row[None, :])
        elif GMODE == 2:
            if uniform:
                sc = tl.broadcast_to(sc_row[None, :], [BLOCK_M, BLOCK_D])
            else:
                sc = tl.load(SCALE + b * s_cb + g[:, None] * s_cg + d[None, :], mask=mask, other=0.0).to(tl.float32)
            wdy = dy * (1.0 + sc)
        else:
            sc = tl.load(SCALE + b * s_cb + g[:, None] * s_cg + d[None, :], mask=mask, other=0.0).to(tl.float32)
            wdy = dy * (1.0 + sc)
        c1 = tl.sum(xhat * wdy, axis=1) / D
        c2 = tl.sum(wdy, axis=1) / D
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DXN:
            dx += tl.load(DXN + offs, mask=mask, other=0.0).to(tl.float32)
        dx = tl.where(mask, dx, 0.0)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        c_sh = dy
        c_sc = dy * xhat
        if HAS_RES:
            br = tl.load(BR + offs, mask=mask, other=0.0).to(tl.float32)
            if GMODE == 0:
                gt = gt_row[None, :]
            elif GMODE == 2:
                if uniform:
                    gt = tl.broadcast_to(gt_row[None, :], [BLOCK_M, BLOCK_D])
                else:
                    gt = tl.load(GATE + b * s_gb + g[:, None] * s_gg + d[None, :], mask=mask,
                                 other=0.0).to(tl.float32)
            else:
                gt = tl.load(GATE + b * s_gb + g[:, None] * s_gg + d[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(DBR + offs, (dx * gt).to(DBR.dtype.element_ty), mask=mask)
            c_gt = dx * br
        if GMODE == 1:  # per token: no reduction
            tl.store(PSH + offs, c_sh, mask=mask)
            tl.store(PSC + offs, c_sc, mask=mask)
            if HAS_RES:
                tl.store(PGT + offs, c_gt, mask=mask)
        elif GMODE == 0:  # one group: sums in registers, one store at the end
            acc_sh += _fold_rows(c_sh, ACC_M)
            acc_sc += _fold_rows(c_sc, ACC_M)
            if HAS_RES:
                acc_gt += _fold_rows(c_gt, ACC_M)
        else:  # indexed groups: sums in registers while the group stays the same (streams are contiguous)
            if uniform:
                g_lo = cur_g
                g_hi = cur_g
            else:
                g_lo = tl.min(tl.where(nmask, g, 2**62), axis=0)
                g_hi = tl.max(tl.where(nmask, g, -1), axis=0)
            if (g_lo == cur_g) & (g_hi == cur_g):
                acc_sh += _fold_rows(c_sh, ACC_M)
                acc_sc += _fold_rows(c_sc, ACC_M)
                if HAS_RES:
                    acc_gt += _fold_rows(c_gt, ACC_M)
            elif g_hi >= 0:
                o = (slot + cur_g) * D + d
                tl.atomic_add(PSH + o, tl.sum(acc_sh, axis=0), mask=dmask)
                tl.atomic_add(PSC + o, tl.sum(acc_sc, axis=0), mask=dmask)
                if HAS_RES:
                    tl.atomic_add(PGT + o, tl.sum(acc_gt, axis=0), mask=dmask)
                for gg in range(0, G):  # this block's groups (G <= MAX_INDEX_GROUPS)
                    if (gg >= g_lo) & (gg <= g_hi):
                        sel = (g == gg) & nmask
                        og = (slot + gg) * D + d
                        tl.atomic_add(PSH + og, tl.sum(tl.where(sel[:, None], c_sh, 0.0), axis=0), mask=dmask)
                        tl.atomic_add(PSC + og, tl.sum(tl.where(sel[:, None], c_sc, 0.0), axis=0), mask=dmask)
                        if HAS_RES:
                            tl.atomic_add(PGT + og, tl.sum(tl.where(sel[:, None], c_gt, 0.0), axis=0),
                                          mask=dmask)
                acc_sh = tl.zeros([ACC_M, BLOCK_D], dtype=tl.float32)
                acc_sc = tl.zeros([ACC_M, BLOCK_D], dtype=tl.float32)
                acc_gt = tl.zeros([ACC_M, BLOCK_D], dtype=tl.float32)
                cur_g = g_hi
    if GMODE == 0:
        o = slot * D + d
        tl.store(PSH + o, tl.sum(acc_sh, axis=0), mask=dmask)
        tl.store(PSC + o, tl.sum(acc_sc, axis=0), mask=dmask)
        if HAS_RES:
            tl.store(PGT + o, tl.sum(acc_gt, axis=0), mask=dmask)
    elif GMODE == 2:
        o = (slot + cur_g) * D + d
        tl.atomic_add(PSH + o, tl.sum(acc_sh, axis=0), mask=dmask)
        tl.atomic_add(PSC + o, tl.sum(acc_sc, axis=0), mask=dmask)
        if HAS_RES:
            tl.atomic_add(PGT + o, tl.sum(acc_gt, axis=0), mask=dmask)


USE_TRITON_OP = os.environ.get("DITLAB_ADALN_OP", "custom_op") == "triton_op"
_op = triton_op if USE_TRITON_OP else torch.library.custom_op


def _launch(kernel):
    return wrap_triton(kernel) if USE_TRITON_OP else kernel


def _blocks(D: int, backward: bool = False) -> tuple[int, int, int]:
    block_d = triton.next_power_of_2(D)
    block_m = max(1, TILE // block_d)
    num_warps = BWD_WARPS if backward and BWD_WARPS else 8 if block_d >= 2048 else 4
    return block_m, block_d, num_warps


def _gmode(G: int, N: int, index: Optional[torch.Tensor]) -> int:
    if index is not None:
        return 2
    if G == 1:
        return 0
    if G == N:
        return 1
    raise ValueError(f"modulation with {G} groups for {N} tokens needs a token -> group index")


def _strides(t: Optional[torch.Tensor]) -> tuple[int, int]:
    return (0, 0) if t is None else (t.stride(0), t.stride(1))


def _unit_last(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


@_op("ditlab::adaln_fwd", mutates_args=())
def adaln_fwd(x: torch.Tensor, branch: Optional[torch.Tensor], gate: Optional[torch.Tensor], shift: torch.Tensor,
              scale: torch.Tensor, index: Optional[torch.Tensor], out_dtype: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, x' (empty without a residual), mean, rstd) for x (B, N, D) contiguous."""
    B, N, D = x.shape
    has_res = branch is not None
    shift, scale, gate = _unit_last(shift), _unit_last(scale), _unit_last(gate)
    y = torch.empty((B, N, D), dtype=out_dtype, device=x.device)
    res_dtype = torch.promote_types(x.dtype, torch.promote_types(branch.dtype, gate.dtype)) if has_res else x.dtype
    xnew = torch.empty((B, N, D) if has_res else (0,), dtype=res_dtype, device=x.device)
    mean = torch.empty((B, N), dtype=torch.float32, device=x.device)
    rstd = torch.empty((B, N), dtype=torch.float32, device=x.device)
    block_m, block_d, num_warps = _blocks(D)
    gmode = _gmode(shift.shape[1], N, index)
    _launch(_adaln_fwd_kernel)[(B, triton.cdiv(N, block_m))](
        x, branch if has_res else x, gate if has_res else shift, shift, scale, index if index is not None else x,
        y, xnew if has_res else y, mean, rstd, N, D, EPS, *_strides(gate), *_strides(shift), *_strides(scale),
        HAS_RES=has_res, GMODE=gmode, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps)
    return y, xnew, mean, rstd


def _fake_fwd(x, branch, gate, shift, scale, index, out_dtype):
    B, N, D = x.shape
    has_res = branch is not None
    res_dtype = torch.promote_types(x.dtype, torch.promote_types(branch.dtype, gate.dtype)) if has_res else x.dtype
    return (x.new_empty((B, N, D), dtype=out_dtype), x.new_empty((B, N, D) if has_res else (0,), dtype=res_dtype),
            x.new_empty((B, N), dtype=torch.float32), x.new_empty((B, N), dtype=torch.float32))


def loop_stages_for(gmode: int, has_res: bool, D: int) -> int:
    """The backward's row-loop depth for one call: BWD_LOOP_STAGES, or under "auto" the sweep's winner per case.
    Kernel alone, against the plain loop: per-sample groups with a residual -20% at D = 384 (4), -17% at D = 768
    (3); without one -12% at D = 384 (4) and nothing at D = 768 (0); two streams -10% with a residual (2; 3 and 4
    are slower there) and -10% without (3). Per-token modulation was not measured (0)."""
    if BWD_LOOP_STAGES != "auto":
        return BWD_LOOP_STAGES
    small = D <= AUTO_TILE_MAX_D
    if gmode == 0:
        return (4 if small else 3) if has_res else (4 if small else 0)
    if gmode == 2:
        return 2 if has_res else 3
    return 0


def _tile_accumulators(D: int) -> bool:
    """Whether the backward adds whole tiles (BWD_ACC tile, or auto at D <= AUTO_TILE_MAX_D)."""
    return BWD_ACC == "tile" or (BWD_ACC == "auto" and D <= AUTO_TILE_MAX_D)


@_op("ditlab::adaln_bwd", mutates_args=())
def adaln_bwd(xn: torch.Tensor, branch: Optional[torch.Tensor], gate: Optional[torch.Tensor], scale: torch.Tensor,
              index: Optional[torch.Tensor], mean: torch.Tensor, rstd: torch.Tensor, dy: torch.Tensor,
              dxn: Optional[torch.Tensor], x_dtype: torch.dtype, shift_dtype: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dbranch, dgate, dshift, dscale); dbranch and dgate are empty without a residual."""
    B, N, D = xn.shape
    has_res = branch is not None
    scale, gate = _unit_last(scale), _unit_last(gate)
    dy = dy.contiguous()
    dxn = None if dxn is None else dxn.contiguous()
    G = scale.shape[1]
    gmode = _gmode(G, N, index)
    block_m, block_d, num_warps = _blocks(D, backward=True)
    if BWD_ACC not in BWD_ACC_MODES:
        raise ValueError(f"DITLAB_ADALN_BWD_ACC must be one of {', '.join(BWD_ACC_MODES)}, got {BWD_ACC!r}")
    if BWD_STAGES < 0:
        raise ValueError(f"DITLAB_ADALN_BWD_STAGES must be >= 0 (0: Triton's default), got {BWD_STAGES}")
    if BWD_LOOP_STAGES != "auto" and BWD_LOOP_STAGES < 0:
        raise ValueError(f"DITLAB_ADALN_BWD_LOOP_STAGES must be >= 0 (0: the plain loop) or auto, got {BWD_LOOP_STAGES}")
    loop_stages = loop_stages_for(gmode, has_res, D)
    if ROWS_PER_PROGRAM < 1 or ROWS_PER_PROGRAM & (ROWS_PER_PROGRAM - 1):
        raise ValueError(f"DITLAB_ADALN_ROWS must be a power of two (a program loads its rows' groups at once), "
                         f"got {ROWS_PER_PROGRAM}")
    rows = max(block_m, min(ROWS_PER_PROGRAM, triton.next_power_of_2(N)))
    P = triton.cdiv(N, rows)
    dx = torch.empty((B, N, D), dtype=x_dtype, device=xn.device)
    dbr = torch.empty((B, N, D) if has_res else (0,), dtype=branch.dtype if has_res else xn.dtype, device=xn.device)
    if gmode == 1:
        part_shape = (B, N, D)
    else:
        part_shape = (B, P, G, D)
    alloc = torch.zeros if gmode == 2 else torch.empty
    psh = alloc(part_shape, dtype=torch.float32, device=xn.device)
    psc = alloc(part_shape, dtype=torch.float32, device=xn.device)
    pgt = alloc(part_shape if has_res else (0,), dtype=torch.float32, device=xn.device)
    _launch(_adaln_bwd_kernel)[(B, P)](
        xn, branch if has_res else xn, gate if has_res else scale, scale, index if index is not None else xn,
        mean, rstd, dy, dxn if dxn is not None else dy, dx, dbr if has_res else dx, psh, psc,
        pgt if has_res else psh, N, D, P, *_strides(gate), *_strides(scale), G=G if gmode == 2 else 1,
        HAS_RES=has_res, HAS_DXN=dxn is not None, GMODE=gmode, ROWS=rows, BLOCK_M=block_m, BLOCK_D=block_d,
        ACC_M=block_m if _tile_accumulators(D) else 1, LOOP_STAGES=loop_stages or None, num_warps=num_warps,
        **({"num_stages": BWD_STAGES} if BWD_STAGES else {}))

    def fold(t, dtype):
        return (t if gmode == 1 else t.sum(1)).to(dtype)

    gate_dtype = gate.dtype if has_res else shift_dtype
    dgate = fold(pgt, gate_dtype) if has_res else xn.new_empty((0,), dtype=gate_dtype)
    return dx, dbr, dgate, fold(psh, shift_dtype), fold(psc, scale.dtype)


def _fake_bwd(xn, branch, gate, scale, index, mean, rstd, dy, dxn, x_dtype, shift_dtype):
    B, N, D = xn.shape
    has_res = branch is not None
    G = scale.shape[1]
    empty = (0,)
    return (xn.new_empty((B, N, D), dtype=x_dtype),
            xn.new_empty((B, N, D) if has_res else empty, dtype=branch.dtype if has_res else xn.dtype),
            xn.new_empty((B, G, D) if has_res else empty, dtype=gate.dtype if has_res else shift_dtype),
            xn.new_empty((B, G, D), dtype=shift_dtype), xn.new_empty((B, G, D), dtype=scale.dtype))


def _setup_context(ctx, inputs, output):
    x, branch, gate, shift, scale, index, out_dtype = inputs
    y, xnew, mean, rstd = output
    ctx.has_res = branch is not None
    ctx.x_dtype = x.dtype
    ctx.shift_dtype = shift.dtype
    # The LayerNorm's input: x, or x' = x + gate * branch (an output, kept alive by the next layer anyway).
    ctx.save_for_backward(xnew if ctx.has_res else x, branch, gate, scale, index, mean, rstd)


def _backward(ctx, dy, dxnew, dmean, drstd):
    xn, branch, gate, scale, index, mean, rstd = ctx.saved_tensors
    dx, dbr, dgate, dshift, dscale = adaln_bwd(xn, branch, gate, scale, index, mean, rstd, dy,
                                               dxnew if ctx.has_res else None, ctx.x_dtype, ctx.shift_dtype)
    if not ctx.has_res:
        dbr = dgate = None
    return dx, dbr, dgate, dshift, dscale, None, None


if not USE_TRITON_OP:  # a triton_op derives its fake implementation by tracing its body
    adaln_fwd.register_fake(_fake_fwd)
    adaln_bwd.register_fake(_fake_bwd)
adaln_fwd.register_autograd(_backward, setup_context=_setup_context)

"""The fused adaLN kernels against the eager reference: forward and gradients, fp32 and bf16, odd shapes.

Where they run: on a CUDA GPU with Triton, every case (the issue-17 shapes: batch 1, 77 / 320 tokens,
D = 384 / 768 / 1152); on the CPU with ``TRITON_INTERPRET=1`` and Triton installed, the same kernels
through Triton's interpreter on small shapes; otherwise the reference path only (its logic against the
plain LayerNorm + modulate code). None of these tests is timing-based.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ditlab.models import kernels
from ditlab.models.kernels.reference import adaln_modulate_ref, gate_residual_adaln_ref

from tests.models.kernels.where import HAS_CUDA_TRITON, HAS_INTERPRETER, gpu, interp, rel_err


def make_case(B, N, D, groups, dtype, device, seed=0, strided=True):
    """x, branch, and gate / shift / scale as (B, G, D) chunk views of one adaLN-like output, + index."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    if groups == "sample":
        G, index = 1, None
    elif groups == "token":
        G, index = N, None
    elif groups == "streams":  # superres-like: the first quarter of the tokens is stream 0, the rest 1
        G, index = 2, (torch.arange(N) >= N // 4).long()
    elif groups == "aligned":  # two streams split at token 64: backward programs of 64 rows hold one group each
        G, index = 2, (torch.arange(N) >= 64).long()
    elif groups == "scattered":  # any token -> group map (the kernels may not assume contiguous streams)
        G, index = 3, torch.randint(0, 3, (N,), generator=g)
    else:
        raise ValueError(groups)
    x = torch.randn(B, N, D, generator=g) * 2 + 0.5
    branch = torch.randn(B, N, D, generator=g)
    mod = torch.randn(B, G, 3 * D, generator=g) * 0.5
    if not strided:
        mod = mod.contiguous()
    to = dict(device=device, dtype=dtype)
    x, branch, mod = x.to(**to), branch.to(**to), mod.to(**to)
    index = None if index is None else index.to(device)
    return x, branch, mod, index


def run_op(fn, x, branch, mod, index, residual: bool):
    """Outputs and gradients of one op (fn = fused or reference) on leaf copies of the inputs."""
    x = x.detach().clone().requires_grad_()
    branch = branch.detach().clone().requires_grad_()
    mod = mod.detach().clone().requires_grad_()
    gate, shift, scale = mod.chunk(3, dim=-1)
    g = torch.Generator(device="cpu").manual_seed(123)
    if residual:
        xn, y = fn[1](x, branch, gate, shift, scale, index)
        outs = [xn, y]
    else:
        outs = [fn[0](x, shift, scale, index)]
    weights = [torch.randn(o.shape, generator=g).to(o.device) for o in outs]
    loss = sum((o.float() * w).sum() for o, w in zip(outs, weights))
    loss.backward()
    grads = [x.grad, mod.grad] + ([branch.grad] if residual else [])
    return [o.detach() for o in outs], grads


FUSED = (kernels.adaln_modulate, kernels.gate_residual_adaln)
REF = (adaln_modulate_ref, gate_residual_adaln_ref)


def check(B, N, D, groups, dtype, device, residual, fused=FUSED):
    x, branch, mod, index = make_case(B, N, D, groups, dtype, device)
    outs, grads = run_op(fused, x, branch, mod, index, residual)
    # Reference: the eager mathematics in fp32 (fp64 for fp32 inputs) on the same (rounded) inputs.
    hi = torch.float64 if dtype == torch.float32 else torch.float32
    ref_outs, ref_grads = run_op(REF, x.to(hi), branch.to(hi), mod.to(hi), index, residual)
    tol = 1e-5 if dtype == torch.float32 else 1.5e-2
    for name, a, b in zip(["x'", "y"] if residual else ["y"], outs, ref_outs):
        assert a.dtype == dtype or name == "y", (name, a.dtype)
        assert rel_err(a, b) < tol, (name, rel_err(a, b))
    for name, a, b in zip(["dx", "dmod", "dbranch"], grads, ref_grads):
        assert a.dtype == dtype and a.shape == b.shape, (name, a.dtype, a.shape)
        assert rel_err(a, b) < tol, (name, rel_err(a, b))


GPU_SHAPES = [(1, 77, 384), (2, 320, 768), (3, 256, 1152), (4, 77, 1152), (1, 320, 384)]


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("groups", ["sample", "token", "streams", "aligned", "scattered"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("residual", [False, True], ids=["ln_mod", "gate_res_ln_mod"])
def test_kernels_gpu(shape, groups, dtype, residual):
    check(*shape, groups, dtype, "cuda", residual)


@gpu
@pytest.mark.parametrize("acc,stages,loop_stages", [("tile", 0, 0), ("row", 1, 0), ("tile", 2, 0), ("auto", 0, 0),
                                                    ("tile", 0, 2), ("row", 0, 3), ("auto", 0, 4), ("auto", 0, "auto")])
@pytest.mark.parametrize("groups", ["sample", "streams", "aligned", "scattered"])
@pytest.mark.parametrize("shape", [(1, 77, 384), (2, 320, 768), (3, 256, 1152)], ids=lambda s: "x".join(map(str, s)))
def test_kernels_gpu_backward_knobs(shape, groups, acc, stages, loop_stages, monkeypatch):
    """The backward's measurement knobs (DITLAB_ADALN_BWD_ACC, _BWD_STAGES, _BWD_LOOP_STAGES) off their defaults,
    bf16, both ops: whole-tile accumulators with one reduction per flush, other pipelining depths, and the row
    loop pipelined by tl.range."""
    from ditlab.models.kernels import adaln_triton

    monkeypatch.setattr(adaln_triton, "BWD_ACC", acc)
    monkeypatch.setattr(adaln_triton, "BWD_STAGES", stages)
    monkeypatch.setattr(adaln_triton, "BWD_LOOP_STAGES", loop_stages)
    for residual in (False, True):
        check(*shape, groups, torch.bfloat16, "cuda", residual)


@gpu
def test_mixed_dtypes_and_autocast_output_gpu():
    """fp32 residual stream, bf16 branch and modulation (as under autocast): x' stays fp32, y is bf16."""
    x, branch, mod, index = make_case(2, 77, 768, "sample", torch.float32, "cuda")
    branch, mod = branch.bfloat16(), mod.bfloat16()
    gate, shift, scale = mod.chunk(3, dim=-1)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        xn, y = kernels.gate_residual_adaln(x, branch, gate, shift, scale, index)
    assert xn.dtype == torch.float32 and y.dtype == torch.bfloat16
    ref_xn, ref_y = gate_residual_adaln_ref(x.double(), branch.double(), gate.double(), shift.double(),
                                            scale.double())
    assert rel_err(xn, ref_xn) < 1e-5 and rel_err(y, ref_y) < 1e-2


@gpu
def test_many_index_groups_fall_back_to_gather_gpu():
    """A slice of per-token groups given by an index (FinalLayer of a multi-stream per-token model)."""
    B, N, D = 2, 40, 384
    c = torch.randn(B, 100, 2 * D, device="cuda")
    index = torch.arange(30, 70, device="cuda")
    x = torch.randn(B, N, D, device="cuda")
    shift, scale = c.chunk(2, dim=-1)
    assert rel_err(kernels.adaln_modulate(x, shift, scale, index), adaln_modulate_ref(x, shift, scale, index)) < 1e-5


@gpu
def test_compile_traces_the_ops_gpu():
    x, branch, mod, index = make_case(2, 320, 384, "streams", torch.bfloat16, "cuda")

    def f(x, branch, mod):
        gate, shift, scale = mod.chunk(3, dim=-1)
        xn, y = kernels.gate_residual_adaln(x, branch, gate, shift, scale, index)
        return (xn.float() + y.float()).square().mean()

    args = [t.detach().clone().requires_grad_() for t in (x, branch, mod)]
    ref_args = [t.detach().clone().requires_grad_() for t in (x, branch, mod)]
    out = torch.compile(f, fullgraph=True)(*args)
    out.backward()
    ref = f(*ref_args)
    ref.backward()
    assert rel_err(out, ref) < 1e-3
    for a, b in zip(args, ref_args):
        assert rel_err(a.grad, b.grad) < 1e-3


@gpu
def test_opcheck_gpu():
    """torch.library's checks of the custom ops (schema, fake tensors, autograd registration)."""
    from ditlab.models.kernels import adaln_triton

    x, branch, mod, index = make_case(2, 77, 384, "streams", torch.float32, "cuda")
    gate, shift, scale = [t.contiguous() for t in mod.chunk(3, dim=-1)]
    torch.library.opcheck(adaln_triton.adaln_fwd, (x, branch, gate, shift, scale, index.int(), torch.float32),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


# ---- CPU: the same kernels through Triton's interpreter (TRITON_INTERPRET=1), small shapes ----------
@interp
@pytest.mark.parametrize("loop_stages", [2, 3, "auto"])
@pytest.mark.parametrize("groups", ["sample", "streams", "scattered"])
def test_kernels_interpreter_pipelined_row_loop(groups, loop_stages, monkeypatch):
    """DITLAB_ADALN_BWD_LOOP_STAGES: the backward's row loop as tl.range(num_stages=S), several tiles per program."""
    from ditlab.models.kernels import adaln_triton

    monkeypatch.setattr(adaln_triton, "BWD_LOOP_STAGES", loop_stages)
    monkeypatch.setattr(adaln_triton, "TILE", 256)
    test_kernels_interpreter((2, 20, 40), groups, True, "auto", monkeypatch)


def test_auto_loop_stages_are_the_sweeps_winners(monkeypatch):
    if not (HAS_INTERPRETER or HAS_CUDA_TRITON):
        pytest.skip("needs Triton")
    from ditlab.models.kernels import adaln_triton

    monkeypatch.setattr(adaln_triton, "BWD_LOOP_STAGES", "auto")
    pick = adaln_triton.loop_stages_for
    assert (pick(0, True, 384), pick(0, True, 768), pick(0, False, 384), pick(0, False, 768)) == (4, 3, 4, 0)
    assert (pick(2, True, 384), pick(2, False, 384), pick(1, True, 384)) == (2, 3, 0)
    monkeypatch.setattr(adaln_triton, "BWD_LOOP_STAGES", 2)
    assert pick(0, True, 384) == pick(2, False, 768) == 2  # a number is used as given


def test_negative_loop_stages_are_refused(monkeypatch):
    if not (HAS_INTERPRETER or HAS_CUDA_TRITON):
        pytest.skip("needs Triton")
    from ditlab.models.kernels import adaln_triton

    monkeypatch.setattr(adaln_triton, "BWD_LOOP_STAGES", -1)
    dev = "cuda" if HAS_CUDA_TRITON else "cpu"
    x, branch, mod, index = make_case(1, 8, 16, "sample", torch.float32, dev)
    _, shift, scale = mod.chunk(3, dim=-1)
    y, _, mean, rstd = adaln_triton.adaln_fwd(x, None, None, shift, scale, None, x.dtype)
    with pytest.raises(ValueError, match="DITLAB_ADALN_BWD_LOOP_STAGES must be >= 0"):
        adaln_triton.adaln_bwd(x, None, None, scale, None, mean, rstd, y, None, x.dtype, shift.dtype)


@interp
@pytest.mark.parametrize("acc", ["row", "tile", "auto"])
@pytest.mark.parametrize("groups", ["sample", "token", "streams", "aligned", "scattered"])
@pytest.mark.parametrize("shape", [(1, 77, 48), (2, 20, 40)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("residual", [False, True], ids=["ln_mod", "gate_res_ln_mod"])
def test_kernels_interpreter(shape, groups, residual, acc, monkeypatch):
    from ditlab.models.kernels import adaln_triton

    monkeypatch.setattr(adaln_triton, "BWD_ACC", acc)  # both ways of summing the modulation gradients
    monkeypatch.setattr(adaln_triton, "TILE", 256)  # several tiles per backward program at these widths

    def fused_ln(x, shift, scale, index):
        return adaln_triton.adaln_fwd(x, None, None, shift, scale, None if index is None else index.int(), x.dtype)[0]

    def fused_res(x, branch, gate, shift, scale, index):
        y, xn, _, _ = adaln_triton.adaln_fwd(x, branch, gate, shift, scale,
                                             None if index is None else index.int(), x.dtype)
        return xn, y

    check(*shape, groups, torch.float32, "cpu", residual, fused=(fused_ln, fused_res))


# ---- CPU: the reference path is the eager block mathematics ----------------------------------------
@pytest.mark.parametrize("groups", ["sample", "token", "streams"])
def test_reference_matches_eager_layernorm_modulate(groups):
    x, branch, mod, index = make_case(2, 20, 32, groups, torch.float32, "cpu")
    gate, shift, scale = mod.chunk(3, dim=-1)
    full = mod if index is None else mod[:, index]
    g2, sh2, sc2 = full.chunk(3, dim=-1)
    ln = torch.nn.LayerNorm(32, elementwise_affine=False, eps=1e-6)
    torch.testing.assert_close(adaln_modulate_ref(x, shift, scale, index), ln(x) * (1 + sc2) + sh2, rtol=0, atol=0)
    xn, y = gate_residual_adaln_ref(x, branch, gate, shift, scale, index)
    x2 = x + g2 * branch
    torch.testing.assert_close(xn, x2, rtol=0, atol=0)
    torch.testing.assert_close(y, ln(x2) * (1 + sc2) + sh2, rtol=0, atol=0)


def test_public_ops_take_the_reference_path_on_cpu():
    x, branch, mod, index = make_case(1, 77, 48, "streams", torch.float32, "cpu")
    gate, shift, scale = mod.chunk(3, dim=-1)
    torch.testing.assert_close(kernels.adaln_modulate(x, shift, scale, index), adaln_modulate_ref(x, shift, scale, index))
    per_sample = torch.randn(1, 48)  # (B, D) is taken as one group
    torch.testing.assert_close(kernels.adaln_modulate(x, per_sample, per_sample),
                               F.layer_norm(x, (48,), eps=1e-6) * (1 + per_sample[:, None]) + per_sample[:, None])


def test_auto_accumulators_follow_the_width(monkeypatch):
    """BWD_ACC=auto: whole-tile accumulators up to D = 512 (where they measured faster), per-row above."""
    pytest.importorskip("triton")
    from ditlab.models.kernels import adaln_triton

    monkeypatch.setattr(adaln_triton, "BWD_ACC", "auto")
    assert adaln_triton._tile_accumulators(384) and adaln_triton._tile_accumulators(512)
    assert not adaln_triton._tile_accumulators(768)
    monkeypatch.setattr(adaln_triton, "BWD_ACC", "row")
    assert not adaln_triton._tile_accumulators(384)


@interp
def test_public_ops_take_token_groups_on_the_triton_path(monkeypatch):
    """A TokenGroups index (ditlab.models.token_groups: the index with its runs) reaches the Triton kernels as its
    index tensor; the result equals the reference path's, which spreads the modulation from the runs."""
    from ditlab.models.token_groups import TokenGroups, runs_of

    x, branch, mod, _ = make_case(2, 20, 40, "sample", torch.float32, "cpu")
    mod = torch.randn(2, 2, 120, generator=torch.Generator().manual_seed(3))
    gate, shift, scale = mod.chunk(3, dim=-1)
    groups = TokenGroups((torch.arange(20) >= 6).long(), runs_of([6, 14]))
    ref = (kernels.adaln_modulate(x, shift, scale, groups),
           *kernels.gate_residual_adaln(x, branch, gate, shift, scale, groups))  # CPU: the reference path
    monkeypatch.setattr(kernels, "_use_triton", lambda t: True)
    fused = (kernels.adaln_modulate(x, shift, scale, groups), *kernels.gate_residual_adaln(x, branch, gate, shift,
                                                                                           scale, groups))
    for a, b in zip(fused, ref):
        assert rel_err(a, b) < 1e-5

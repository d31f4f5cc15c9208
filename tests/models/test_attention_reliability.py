"""Issue 7, items 10, 11, 12 and 14: attention masks under every backend, padding and flipped masks.

10. Fully masked query rows: finite output, exactly zero rows, finite gradients (CPU backends here,
    every CUDA backend in fp32 and bf16 through scripts/reliability_gpu.py).
11. A key-padding mask equals attention over the unpadded slice, and a mask whose meaning is
    flipped (True = ignore) is caught by that very comparison.
12. Padding invariance: 10 real tokens padded to 16 give the outputs of the 10 tokens alone, for the
    attention module and for a whole DiT.
14. A masked call never runs on a backend that drops the mask (it is honoured or the backend
    raises); without a mask the backends agree within bf16 tolerance.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ditlab.models.attention import Attention
from ditlab.models.dit import DiT, StreamSpec

from tests.script_modules import load_script

# Backends that exist on the CPU build; efficient and cuDNN attention are CUDA-only.
CPU_BACKENDS = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOL = {"fp32": dict(atol=1e-5, rtol=1e-5), "bf16": dict(atol=3e-2, rtol=3e-2)}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_attn(cross: bool, qk_norm: bool = False, dtype=torch.float32, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(32, 4, kv_dim=24 if cross else None, qk_norm=qk_norm).to(dtype).eval()


class FlippedMask(torch.nn.Module):
    """An attention whose mask convention is inverted (True = ignore): the bug item 11 must catch."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.attn = attn

    def forward(self, x, context=None, mask=None, rope=None):
        return self.attn(x, context=context, mask=None if mask is None else ~mask, rope=rope)


def gpu_script():
    """scripts/reliability_gpu.py as a module: the GPU tests run the same checks as the script."""
    return load_script("reliability_gpu")


def token_dit(n: int, seed: int = 0) -> DiT:
    """A DiT over one token stream of n tokens with index positions; weights perturbed away from
    adaLN-Zero's identity so that every layer does something."""
    torch.manual_seed(seed)
    model = DiT([StreamSpec("pts", 3, n, kind="tokens", positions="index")], hidden_size=32, depth=2,
                num_heads=4, qk_norm=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def token_inputs(n: int):
    g = torch.Generator().manual_seed(4)
    return {"pts": torch.randn(2, n, 3, generator=g)}, {"pts": torch.rand(2, generator=g)}


# ---- item 10: fully masked rows ------------------------------------------------------------------
def run_with_grads(attn, x, context, mask, backend):
    x = x.clone().requires_grad_(True)
    context = None if context is None else context.clone().requires_grad_(True)
    with sdpa_kernel([backend]):
        out = attn(x, context=context, mask=mask)
        out.float().square().sum().backward()
    grads = [x.grad] + ([context.grad] if context is not None else []) + [p.grad for p in attn.parameters()]
    return out, grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fully_masked_sample_is_zero_and_finite_on_cpu_backends(backend, dtype):
    attn = make_attn(cross=True, dtype=DTYPES[dtype])
    x, ctx = torch.randn(3, 5, 32, dtype=DTYPES[dtype]), torch.randn(3, 8, 24, dtype=DTYPES[dtype])
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1] = False  # sample 1: the whole context is padding (a dropped condition)
    out, grads = run_with_grads(attn, x, ctx, mask, CPU_BACKENDS[backend])
    assert torch.isfinite(out).all()
    assert torch.count_nonzero(out[1]) == 0  # exactly zero, not merely small
    assert torch.count_nonzero(out[0]) > 0 and torch.count_nonzero(out[2]) > 0
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fully_masked_query_row_is_zero_and_finite_on_cpu_backends(backend, dtype):
    attn = make_attn(cross=False, dtype=DTYPES[dtype])
    x = torch.randn(2, 6, 32, dtype=DTYPES[dtype])
    mask = torch.ones(6, 6, dtype=torch.bool).tril().expand(2, 6, 6).clone()
    mask[0, 3] = False  # query 3 of sample 0 sees no key at all
    out, grads = run_with_grads(attn, x, None, mask, CPU_BACKENDS[backend])
    assert torch.isfinite(out).all() and torch.count_nonzero(out[0, 3]) == 0
    assert torch.count_nonzero(out[1, 3]) > 0
    assert all(torch.isfinite(g).all() for g in grads)


def test_fully_masked_rows_backward_gives_no_gradient_to_the_hidden_keys():
    """The dead row attends everywhere internally; zeroing it must also cut its gradient path."""
    attn = make_attn(cross=True)
    x, ctx = torch.randn(2, 4, 32), torch.randn(2, 8, 24, requires_grad=True)
    mask = torch.tensor([[True] * 5 + [False] * 3, [False] * 8])
    attn(x, context=ctx, mask=mask).square().sum().backward()
    assert torch.count_nonzero(ctx.grad[1]) == 0  # the fully masked sample's keys get nothing
    assert torch.count_nonzero(ctx.grad[0, 5:]) == 0  # nor do padded keys of a live sample
    assert torch.count_nonzero(ctx.grad[0, :5]) > 0


# ---- item 11: key padding == unpadded slice; a flipped mask is caught -----------------------------
@torch.no_grad()
def padding_error(attn, cross: bool, dtype=torch.float32) -> float:
    """Largest difference between padded + masked attention and attention over the real keys only."""
    g = torch.Generator().manual_seed(3)
    lengths = [10, 7]
    if cross:
        x, keys = torch.randn(2, 5, 32, generator=g).to(dtype), torch.randn(2, 16, 24, generator=g).to(dtype)
    else:
        x = keys = torch.randn(2, 16, 32, generator=g).to(dtype)
    mask = torch.arange(16)[None] < torch.tensor(lengths)[:, None]
    keys = keys.masked_fill(~mask[..., None], 100.0)  # garbage in the padding
    if cross:
        padded = attn(x, context=keys, mask=mask)
        refs = [attn(x[b:b + 1], context=keys[b:b + 1, :n]) for b, n in enumerate(lengths)]
        rows = [slice(None)] * 2
    else:
        padded = attn(keys, mask=mask)
        refs = [attn(keys[b:b + 1, :n]) for b, n in enumerate(lengths)]
        rows = [slice(0, n) for n in lengths]  # the padded queries' own outputs are not used
    return max(float((padded[b:b + 1, rows[b]] - ref).float().abs().max()) for b, ref in enumerate(refs))


@pytest.mark.parametrize("cross", [True, False], ids=["cross", "self"])
def test_key_padding_equals_unpadded_slice_and_flipped_mask_is_caught(cross):
    attn = make_attn(cross)
    assert padding_error(attn, cross) < 1e-5
    # The same comparison fails for an implementation that reads True as "ignore".
    assert padding_error(FlippedMask(attn), cross) > 1e-2


def test_dit_token_mask_flipped_is_caught():
    model, x, t = token_dit(16), *token_inputs(16)
    mask = {"pts": torch.arange(16)[None].expand(2, 16) < 10}
    out = model(x, t, token_mask=mask)["pts"][:, :10]
    alone = token_dit(10)
    alone.load_state_dict(model.state_dict())
    ref = alone({"pts": x["pts"][:, :10]}, t)["pts"]
    torch.testing.assert_close(out, ref, **TOL["fp32"])
    flipped = model(x, t, token_mask={"pts": ~mask["pts"]})["pts"][:, :10]
    assert (flipped - ref).abs().max() > 1e-2


# ---- item 12: padding invariance, 10 vs 16 tokens -----------------------------------------------
def rope_tables(n: int, head_dim: int = 8):
    angles = torch.arange(n, dtype=torch.float32)[:, None] * torch.linspace(0.1, 1.0, head_dim // 2)
    return angles.cos(), angles.sin()


@pytest.mark.parametrize("qk_norm", [False, True])
def test_self_attention_padding_invariance_10_vs_16_with_rope(qk_norm):
    attn = make_attn(cross=False, qk_norm=qk_norm)
    x10 = torch.randn(1, 10, 32)
    x16 = torch.cat([x10, torch.full((1, 6, 32), 7.0)], dim=1)
    mask = torch.arange(16)[None] < 10
    padded = attn(x16, mask=mask, rope=rope_tables(16))
    alone = attn(x10, rope=rope_tables(10))
    torch.testing.assert_close(padded[:, :10], alone, **TOL["fp32"])
    assert not torch.allclose(attn(x16, rope=rope_tables(16))[:, :10], alone, atol=1e-3)  # the mask matters


def test_dit_padding_invariance_10_vs_16():
    """Parameters do not depend on the stream length, so a 10-token DiT can take the 16-token one's weights."""
    model16 = token_dit(16)
    model10 = token_dit(10)
    model10.load_state_dict(model16.state_dict())
    x16, t = token_inputs(16)
    x16["pts"][:, 10:] = 50.0  # garbage padding
    lengths = torch.tensor([10, 13])
    mask = {"pts": torch.arange(16)[None] < lengths[:, None]}
    out16 = model16(x16, t, token_mask=mask)["pts"]
    out10 = model10({"pts": x16["pts"][:1, :10]}, {"pts": t["pts"][:1]})["pts"]
    torch.testing.assert_close(out16[:1, :10], out10, **TOL["fp32"])
    # Sample 1 (13 real tokens) is untouched by the padding of sample 0, and vice versa.
    model13 = token_dit(13)
    model13.load_state_dict(model16.state_dict())
    out13 = model13({"pts": x16["pts"][1:, :13]}, {"pts": t["pts"][1:]})["pts"]
    torch.testing.assert_close(out16[1:, :13], out13, **TOL["fp32"])
    unmasked = model16(x16, t)["pts"]
    assert not torch.allclose(unmasked[:1, :10], out10, atol=1e-3)  # the test can fail


# ---- item 14: masked calls keep their mask; unmasked backends agree -------------------------------
def test_masked_call_passes_the_mask_to_sdpa(monkeypatch):
    """The module hands SDPA a boolean mask of the caller's meaning and never asks for is_causal."""
    seen = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        seen.append((attn_mask, is_causal))
        return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    attn = make_attn(cross=True)
    mask = torch.tensor([[True] * 6 + [False] * 2, [True] * 8])
    attn(torch.randn(2, 3, 32), context=torch.randn(2, 8, 24), mask=mask)
    (attn_mask, is_causal), = seen
    assert attn_mask is not None and attn_mask.dtype == torch.bool and not is_causal
    assert torch.equal(attn_mask[:, 0, 0], mask)  # (B, heads, queries, keys), True = keep


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_masked_call_under_each_cpu_backend_honours_the_mask_or_raises(backend, dtype):
    attn = make_attn(cross=True, dtype=DTYPES[dtype])
    try:
        with sdpa_kernel([CPU_BACKENDS[backend]]):
            err = padding_error(attn, cross=True, dtype=DTYPES[dtype])
            flipped = padding_error(FlippedMask(attn), cross=True, dtype=DTYPES[dtype])
    except RuntimeError as e:  # a backend that cannot take a mask must refuse the call, not drop the mask
        assert "backend" in str(e).lower() or "kernel" in str(e).lower(), e
        return
    # bf16: padded and unpadded runs round differently; a dropped mask moves the output by ~1.
    assert err < (1e-5 if dtype == "fp32" else 5e-2), f"{backend} {dtype}: the mask was not honoured"
    assert flipped > 0.2


def test_unmasked_backends_agree_within_bf16_tolerance():
    """CPU math vs flash in bf16, both against the fp32 math reference; outputs and input gradients."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 24, 32, generator=g)
    ref_attn = make_attn(cross=False)
    ref, (ref_grad, *_) = run_with_grads(ref_attn, x, None, None, SDPBackend.MATH)
    attn = make_attn(cross=False, dtype=torch.bfloat16)
    for backend in CPU_BACKENDS.values():
        out, (grad, *_) = run_with_grads(attn, x.bfloat16(), None, None, backend)
        attn.zero_grad(set_to_none=True)
        torch.testing.assert_close(out.float(), ref, **TOL["bf16"])
        torch.testing.assert_close(grad.float(), ref_grad, **TOL["bf16"])


# ---- the GPU checks (items 10, 11 and 14 on every CUDA backend) -----------------------------------
@needs_cuda
@pytest.mark.parametrize("cross", [True, False], ids=["cross", "self"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["math", "efficient", "flash", "cudnn"])
def test_gpu_fully_masked_rows_on_every_backend(backend, dtype, cross):
    result = gpu_script().check_fully_masked(torch.device("cuda"), backend, dtype, cross)
    assert result["passed"], result


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_masked_default_dispatch_honours_the_mask(dtype):
    result = gpu_script().check_masked_default_dispatch(torch.device("cuda"), dtype)
    assert result["passed"], result


@needs_cuda
def test_gpu_unmasked_backends_agree_within_bf16_tolerance():
    result = gpu_script().check_unmasked_agree_bf16(torch.device("cuda"))
    assert result["passed"], result

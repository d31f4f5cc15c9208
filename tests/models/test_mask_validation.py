"""Issue 7, items 13 and 26: masks are boolean, and a mask of the wrong shape is a ValueError that
shows the expected and the actual shape, at the attention module and at every DiT mask argument.

13. A float mask (an additive mask filled with finfo.min, or 0/1 floats) or an integer mask is
    rejected by the attention module, never reinterpreted. DiT.forward (the user-facing input, issue 15)
    converts a float or integer mask holding only 0 and 1 (1 = real) to bool and refuses any other value
    (ValueError naming the mask and the value); tests/models/test_padding_nan.py covers the conversion.
26. A mask whose shape does not fit raises ValueError naming both shapes; nothing is broadcast.

DiT.forward validates token_mask, context_mask and the drop flags before they are concatenated or
broadcast (a misspelt stream name used to drop the mask silently).
"""
from __future__ import annotations

import pytest
import torch

from ditlab.diffusion.objectives import expand_token_mask
from ditlab.models.attention import Attention, check_mask
from ditlab.models.dit import DiT, StreamSpec

COND = StreamSpec("a", 3, 4, kind="tokens", positions="index", predict=False)
TARGET = StreamSpec("b", 2, 4, kind="tokens", positions="index")


def tiny_dit() -> DiT:
    torch.manual_seed(0)
    return DiT([COND, TARGET], hidden_size=32, depth=1, num_heads=4, context_dim=6).eval()


def dit_inputs():
    g = torch.Generator().manual_seed(1)
    x = {"a": torch.randn(2, 4, 3, generator=g), "b": torch.randn(2, 4, 2, generator=g)}
    t = {"a": torch.zeros(2), "b": torch.rand(2, generator=g)}
    return x, t, torch.randn(2, 5, 6, generator=g)


def additive_mask(dtype) -> torch.Tensor:
    """The additive convention other code bases use: 0 = keep, finfo.min = ignore."""
    keep = torch.tensor([[True, True, False, False]])
    return torch.zeros(1, 4, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)


# ---- item 13: booleans only -----------------------------------------------------------------------
@pytest.mark.parametrize("mask", [
    additive_mask(torch.float32), additive_mask(torch.bfloat16), additive_mask(torch.float16),
    torch.tensor([[1.0, 1.0, 0.0, 0.0]]), torch.tensor([[1, 1, 0, 0]]), torch.tensor([[1, 1, 0, 0]], dtype=torch.uint8),
], ids=["finfo-min-fp32", "finfo-min-bf16", "finfo-min-fp16", "float-01", "int64", "uint8"])
def test_attention_rejects_non_boolean_masks(mask):
    attn = Attention(32, 4).eval()
    with pytest.raises(TypeError, match=rf"boolean.*{mask.dtype}"):
        attn(torch.randn(1, 4, 32), mask=mask)


def test_dit_rejects_an_additive_float_token_mask():
    model, (x, t, ctx) = tiny_dit(), dit_inputs()
    bad = torch.zeros(2, 4).masked_fill(torch.tensor([False, False, True, True]), torch.finfo(torch.float32).min)
    with pytest.raises(ValueError, match=r"token_mask\['b'\] must be boolean .*or hold only 0 and 1"):
        model(x, t, context=ctx, token_mask={"b": bad})


@pytest.mark.parametrize("drop", [None, torch.tensor([False, True])], ids=["no-drop", "with-context-drop"])
def test_dit_rejects_a_float_context_mask_that_is_not_0_1(drop):
    """With context_drop the mask goes through torch.where first: it must still be refused."""
    model, (x, t, ctx) = tiny_dit(), dit_inputs()
    with pytest.raises(ValueError, match=r"context_mask .*holds 0\.5"):
        model(x, t, context=ctx, context_mask=torch.full((2, 5), 0.5), context_drop=drop)


# ---- item 26: shapes ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,pattern", [
    ((2, 7), r"has shape \(2, 7\), expected \(2, 8\)"),
    ((3, 8), r"has shape \(3, 8\), expected \(2, 8\)"),
    ((2, 5, 7), r"has shape \(2, 5, 7\), expected \(2, 5, 8\)"),
    ((8,), r"\(B, M\) or \(B, N, M\), got \(8,\)"),
    ((2, 1, 5, 8), r"\(B, M\) or \(B, N, M\), got \(2, 1, 5, 8\)"),
])
def test_attention_mask_shape_mismatch_names_both_shapes(shape, pattern):
    attn = Attention(32, 4, kv_dim=24).eval()
    with pytest.raises(ValueError, match=pattern):
        attn(torch.randn(2, 5, 32), context=torch.randn(2, 8, 24), mask=torch.ones(shape, dtype=torch.bool))


def test_broadcastable_mask_is_not_accepted():
    """(B, 1) would broadcast over the keys in SDPA; check_mask refuses it instead."""
    with pytest.raises(ValueError, match=r"\(2, 1\), expected \(2, 8\)"):
        check_mask(torch.ones(2, 1, dtype=torch.bool), 2, 5, 8)


def test_dit_token_mask_of_the_wrong_length_names_the_shapes():
    model, (x, t, ctx) = tiny_dit(), dit_inputs()
    with pytest.raises(ValueError, match=r"expected"):
        model(x, t, context=ctx, token_mask={"b": torch.ones(2, 5, dtype=torch.bool)})


def test_dit_context_mask_of_the_wrong_length_names_the_shapes():
    model, (x, t, ctx) = tiny_dit(), dit_inputs()
    with pytest.raises(ValueError, match=r"\(2, 6\), expected \(2, 5\)"):
        model(x, t, context=ctx, context_mask=torch.ones(2, 6, dtype=torch.bool))


@pytest.mark.parametrize("shape", [(3, 4), (4,)], ids=["wrong-batch", "1-d"])
def test_dit_token_mask_of_the_wrong_batch_or_rank_is_a_value_error(shape):
    model, (x, t, ctx) = tiny_dit(), dit_inputs()
    with pytest.raises(ValueError, match=r"token_mask.*'b'.*expected \(2, 4\)"):
        model(x, t, context=ctx, token_mask={"b": torch.ones(shape, dtype=torch.bool)})


def test_dit_token_mask_for_an_unknown_stream_is_an_error():
    """A misspelt stream name would otherwise drop the mask silently: padding is attended to."""
    model, (x, t, ctx) = tiny_dit(), dit_inputs()
    with pytest.raises(ValueError, match="'c'"):
        model(x, t, context=ctx, token_mask={"c": torch.ones(2, 4, dtype=torch.bool)})


def test_dit_context_mask_is_not_broadcast_by_context_drop():
    """(B, 1) mask + context_drop: torch.where broadcasts it to (B, M) and every padded key is kept."""
    model, (x, t, ctx) = tiny_dit(), dit_inputs()
    with pytest.raises(ValueError, match=r"\(2, 1\).*\(2, 5\)"):
        model(x, t, context=ctx, context_mask=torch.ones(2, 1, dtype=torch.bool),
              context_drop=torch.tensor([False, False]))


@pytest.mark.parametrize("kwargs", [
    dict(context_mask=torch.ones(2, 6, dtype=torch.bool), context_drop=torch.tensor([False, True])),
    dict(context_drop=torch.tensor([False, True, True])),
], ids=["context-mask-with-drop", "context-drop"])
def test_dit_context_shapes_with_context_drop_are_value_errors(kwargs):
    model, (x, t, ctx) = tiny_dit(), dit_inputs()
    with pytest.raises(ValueError, match="expected"):
        model(x, t, context=ctx, **kwargs)


def test_loss_mask_of_the_wrong_shape_names_both_shapes():
    """The objective's per-token loss mask, (B, N_s), against an image stream of 4x4 patches."""
    with pytest.raises(ValueError, match=r"shape \(2, 15\), expected \(2, 16\)"):
        expand_token_mask(torch.ones(2, 15, dtype=torch.bool), torch.zeros(2, 3, 8, 8), patch_size=2)

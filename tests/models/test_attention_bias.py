"""The float logit bias beside the boolean masks (AttnBias; --cond-scale of token injection)."""
import math

import pytest
import torch

from ditlab.models.attention import Attention, AttnBias


def attn():
    torch.manual_seed(0)
    return Attention(16, 2).eval()


def reference(a, x, bias):
    """Plain softmax attention with an additive per-key bias (B, M)."""
    B, N, D = x.shape
    q, k, v = (a._heads(t) for t in a.qkv(x).chunk(3, dim=-1))
    logits = q @ k.transpose(-1, -2) / math.sqrt(a.head_dim) + bias[:, None, None, :]
    out = logits.softmax(-1) @ v
    return a.proj(out.transpose(1, 2).flatten(2))


def test_bias_is_added_to_the_logits():
    a, x = attn(), torch.randn(2, 5, 16)
    bias = torch.zeros(2, 5)
    bias[:, :2] = math.log(0.5)
    torch.testing.assert_close(a(x, mask=AttnBias(None, bias)), reference(a, x, bias))
    torch.testing.assert_close(a(x, mask=AttnBias(None, torch.zeros(2, 5))), a(x))


def test_minus_inf_bias_masks_and_a_fully_masked_row_stays_finite_and_zero():
    a, x = attn(), torch.randn(2, 5, 16, requires_grad=True)
    keep = torch.tensor([[True, True, False, True, True], [True] * 5])
    bias = torch.zeros(2, 5).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(a(x, mask=AttnBias(None, bias)), a(x, mask=keep))
    # every key of sample 0 masked (by the bias for some, the boolean mask for the others)
    bias = torch.full((2, 5), float("-inf"))
    bias[1] = 0.0
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    out = a(x, mask=AttnBias(mask, bias))
    assert torch.isfinite(out).all() and (out[0] == 0).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_bad_bias_is_refused():
    a, x = attn(), torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match="attention bias has shape"):
        a(x, mask=AttnBias(None, torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        a(x, mask=AttnBias(None, torch.full((2, 5), float("nan"))))
    with pytest.raises(TypeError, match="float"):
        a(x, mask=AttnBias(None, torch.zeros(2, 5, dtype=torch.long)))

"""ditlab.models.rotary: every form of the rotation gives the default form's numbers, forward and backward, and
each is a rotation (norm-preserving, relative: q_m . k_n depends on m - n only along an axis)."""
import importlib

import pytest
import torch

from ditlab.models import rotary
from ditlab.models.embed import rope_2d


def _inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    cos, sin = rope_2d(4, 4, 16)  # 16 tokens, head dim 16
    x = torch.randn(2, 3, 16, 16, generator=g).to(dtype)
    return x, cos, sin


@pytest.mark.parametrize("form", sorted(rotary.FORMS))
def test_every_form_matches_the_default_forward_and_backward(form):
    x, cos, sin = _inputs()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    outs, grads = [], []
    for f in (rotary.rotate_pairs, rotary.FORMS[form]):
        xi = x.clone().requires_grad_(True)
        out = f(xi, cos, sin)
        out.backward(grad)
        outs.append(out.detach())
        grads.append(xi.grad)
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("form", sorted(rotary.FORMS))
def test_every_form_rotates_pairs(form):
    """Norms of each pair are kept, and angle 0 is the identity: a wrong sign or pairing fails one of them."""
    x, cos, sin = _inputs()
    out = rotary.FORMS[form](x, cos, sin)
    pair_norm = lambda t: t.unflatten(-1, (-1, 2)).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(pair_norm(out), pair_norm(x))
    assert not torch.allclose(out, x)
    torch.testing.assert_close(rotary.FORMS[form](x, torch.ones_like(cos), torch.zeros_like(sin)), x)
    # the rotation by theta, then by -theta, is the identity
    torch.testing.assert_close(rotary.FORMS[form](out, cos, -sin), x, rtol=0, atol=1e-5)


def test_bf16_inputs_come_back_in_bf16():
    x, cos, sin = _inputs(dtype=torch.bfloat16)
    for form in rotary.FORMS.values():
        assert form(x, cos, sin).dtype == torch.bfloat16


def test_the_form_knob_rejects_an_unknown_form(monkeypatch):
    monkeypatch.setenv("DITLAB_ROPE_FORM", "spiral")
    with pytest.raises(ValueError, match="DITLAB_ROPE_FORM='spiral'"):
        importlib.reload(rotary)
    monkeypatch.setenv("DITLAB_ROPE_FORM", "pairs_swapped")
    importlib.reload(rotary)
    try:
        assert rotary.ROPE_FORM == "pairs_swapped"
        x, cos, sin = _inputs()
        torch.testing.assert_close(rotary.apply_rope(x, cos, sin), rotary.rotate_pairs(x, cos, sin), rtol=0, atol=1e-6)
    finally:
        monkeypatch.delenv("DITLAB_ROPE_FORM")
        importlib.reload(rotary)
    assert rotary.ROPE_FORM == "pairs"

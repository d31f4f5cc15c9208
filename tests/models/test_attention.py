import pytest
import torch

from ditlab.models.attention import Attention


def _attn(cross=False, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return Attention(32, 4, kv_dim=24 if cross else None, dropout=dropout).eval()


def test_key_padding_equals_unpadded_slice():
    """Attention over a padded context with a mask equals attention over the real elements only."""
    attn = _attn(cross=True)
    x = torch.randn(2, 5, 32)
    ctx = torch.randn(2, 16, 24)
    lengths = [10, 7]
    mask = torch.arange(16)[None] < torch.tensor(lengths)[:, None]
    padded = attn(x, context=ctx.masked_fill(~mask[..., None], 123.0), mask=mask)  # garbage in the padding
    for b, n in enumerate(lengths):
        ref = attn(x[b : b + 1], context=ctx[b : b + 1, :n])
        torch.testing.assert_close(padded[b : b + 1], ref, atol=1e-5, rtol=1e-5)


def test_inverted_mask_is_detected():
    """The padding test has teeth: inverting the mask changes the output."""
    attn = _attn(cross=True)
    x, ctx = torch.randn(1, 5, 32), torch.randn(1, 16, 24)
    mask = torch.arange(16)[None] < 10
    ref = attn(x, context=ctx[:, :10])
    torch.testing.assert_close(attn(x, context=ctx, mask=mask), ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(attn(x, context=ctx, mask=~mask), ref, atol=1e-3)


def test_fully_masked_rows_are_zero_and_finite_with_finite_grads():
    attn = _attn(cross=True).train()
    x = torch.randn(3, 5, 32, requires_grad=True)
    ctx = torch.randn(3, 8, 24, requires_grad=True)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1] = False  # sample 1: the whole context is padding (e.g. a dropped condition)
    out = attn(x, context=ctx, mask=mask)
    assert torch.isfinite(out).all()
    assert torch.count_nonzero(out[1]) == 0
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(ctx.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_per_query_mask_fully_masked_query():
    attn = _attn()
    x = torch.randn(1, 4, 32)
    mask = torch.tril(torch.ones(4, 4, dtype=torch.bool))[None].clone()
    mask[0, 2] = False  # query 2 sees nothing
    out = attn(x, mask=mask)
    assert torch.isfinite(out).all() and torch.count_nonzero(out[0, 2]) == 0
    # causal rows equal attention over their prefix
    torch.testing.assert_close(out[0, 1], attn(x[:, :2])[0, 1], atol=1e-5, rtol=1e-5)


def test_dropout_only_in_training():
    attn = _attn(dropout=0.5)
    x = torch.randn(2, 6, 32)
    attn.eval()
    torch.testing.assert_close(attn(x), attn(x))
    attn.train()
    torch.manual_seed(0)
    a = attn(x)
    torch.manual_seed(1)
    b = attn(x)
    assert not torch.allclose(a, b)


def test_float_mask_rejected():
    attn = _attn()
    x = torch.randn(1, 4, 32)
    bad = torch.zeros(1, 4).masked_fill(torch.tensor([[False, False, True, True]]), torch.finfo(torch.float32).min)
    with pytest.raises(TypeError, match="boolean"):
        attn(x, mask=bad)


def test_mask_shape_mismatch_names_shapes():
    attn = _attn()
    with pytest.raises(ValueError, match=r"\(1, 5\).*expected \(1, 4\)"):
        attn(torch.randn(1, 4, 32), mask=torch.ones(1, 5, dtype=torch.bool))


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("run_mask", [None, "keys", "pairs"])
@pytest.mark.parametrize("where", ["middle", "end", "start"])
def test_key_split_is_the_masked_pass_with_one_projection_of_q_k_v(qk_norm, run_mask, where):
    """split=KeySplit(keep, sees_all): (the output over every key, the output without the other keys for all
    queries but sees_all) equal two forwards with the corresponding boolean masks; a query left with no
    visible key gets exactly zero, as in a plain forward. A group at either end leaves the other keys one range:
    the slice path (keep_range), which must agree with the gathered one."""
    from ditlab.models.attention import KeySplit

    torch.manual_seed(0)
    attn = Attention(16, 2, qk_norm=qk_norm).eval()
    B, N = 3, 7
    x = torch.randn(B, N, 16)
    group = torch.zeros(N, dtype=torch.bool)
    at = {"middle": [1, 2], "end": [5, 6], "start": [0, 1]}[where]
    group[at] = True  # two keys are the group; its own queries see everything
    split = KeySplit.without_group(group)
    keep = split.keep
    assert (split.keep_range is None) == (where == "middle")
    others = [i for i in range(N) if i not in at]
    mask = None
    if run_mask == "keys":
        mask = torch.ones(B, N, dtype=torch.bool)
        mask[0, others[-2:]] = False
        mask[2, others] = False  # sample 2: only the group's keys are visible -> other rows all hidden
    elif run_mask == "pairs":
        mask = torch.rand(B, N, N, generator=torch.Generator().manual_seed(1)) < 0.7
    full, hidden = attn(x, mask=mask, split=split)
    if split.keep_range is not None:  # the slice path against the gathered path
        full_g, hidden_g = attn(x, mask=mask, split=KeySplit(split.keep, split.sees_all))
        torch.testing.assert_close(full, full_g, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(hidden, hidden_g, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(full, attn(x, mask=mask), atol=1e-6, rtol=1e-5)
    hide = ~(~group[:, None] & group[None, :])  # (N, N): other queries do not see the group's keys
    base = torch.ones(B, N, N, dtype=torch.bool) if mask is None else (mask if mask.dim() == 3 else
                                                                       mask[:, None, :].expand(B, N, N))
    torch.testing.assert_close(hidden, attn(x, mask=base & hide), atol=1e-6, rtol=1e-5)
    if run_mask == "keys":
        assert torch.equal(hidden[2, ~group], torch.zeros_like(hidden[2, ~group]))
    with pytest.raises(ValueError, match="key split is for self-attention"):
        attn(x, split=KeySplit(keep, group), return_kv=True)


@pytest.mark.parametrize("run_mask", [None, "pairs"])
def test_key_split_slices_have_the_gathered_gradients(run_mask):
    """The slice path (keep_range) and the gathered path give the same gradients (to x and every weight)."""
    from ditlab.models.attention import KeySplit

    torch.manual_seed(0)
    attn = Attention(16, 2, qk_norm=True)
    B, N = 2, 9
    x = torch.randn(B, N, 16)
    group = torch.zeros(N, dtype=torch.bool)
    group[6:] = True
    mask = None if run_mask is None else torch.rand(B, N, N, generator=torch.Generator().manual_seed(2)) < 0.7
    w1, w2 = torch.randn(B, N, 16), torch.randn(B, N, 16)
    grads = []
    for split in (KeySplit.without_group(group), KeySplit((~group).nonzero().flatten(), group)):
        xg = x.clone().requires_grad_()
        attn.zero_grad()
        full, hidden = attn(xg, mask=mask, split=split)
        ((full * w1).sum() + (hidden * w2).sum()).backward()
        grads.append([xg.grad] + [p.grad.clone() for p in attn.parameters()])
    assert KeySplit.without_group(group).keep_range == (0, 6)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)

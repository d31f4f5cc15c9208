"""DiT.forward(attn_mask=...): a query never sees a masked key, whatever the key holds."""
import pytest
import torch

from ditlab.models.dit import DiT, StreamSpec

A = StreamSpec("a", 3, 4, kind="tokens", positions="index", predict=False)
B = StreamSpec("b", 2, 4, kind="tokens", positions="index")


def tiny():
    torch.manual_seed(0)
    model = DiT([A, B], hidden_size=32, depth=2, num_heads=4)
    with torch.no_grad():  # adaLN-Zero starts as the identity: perturb to a non-trivial network
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def inputs():
    torch.manual_seed(1)
    return {"a": torch.randn(2, 4, 3), "b": torch.randn(2, 4, 2)}, {"a": torch.zeros(2), "b": torch.rand(2)}


@pytest.mark.parametrize("batched", [False, True])
def test_changing_a_masked_key_leaves_the_query_unchanged(batched):
    model = tiny()
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[:, 1] = False  # key a_1 (token 1) is hidden from every query, so nothing can relay it either
    m = mask.expand(2, 8, 8) if batched else mask
    x, t = inputs()
    out = model(x, t, attn_mask=m)["b"]
    x2 = {k: v.clone() for k, v in x.items()}
    x2["a"][:, 1] += 5.0
    out2 = model(x2, t, attn_mask=m)["b"]
    torch.testing.assert_close(out, out2)
    # Without the mask the same change is visible: the test can fail.
    assert not torch.allclose(model(x, t)["b"], model(x2, t)["b"])


def test_attn_mask_combines_with_key_padding():
    model = tiny()
    x, t = inputs()
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    pad = {"b": torch.tensor([[True, True, False, True]] * 2)}  # b_2 (index 6) is padding
    out = model(x, t, attn_mask=causal, token_mask=pad)["b"]
    x2 = {k: v.clone() for k, v in x.items()}
    x2["b"][:, 2] += 5.0
    out2 = model(x2, t, attn_mask=causal, token_mask=pad)["b"]
    # b_3 would see b_2 through the causal mask, but b_2 is padding; b_2's own output may change.
    torch.testing.assert_close(out[:, [0, 1, 3]], out2[:, [0, 1, 3]])


def test_bad_attn_mask_is_named():
    model = tiny()
    x, t = inputs()
    with pytest.raises(ValueError, match="attn_mask has shape"):
        model(x, t, attn_mask=torch.ones(7, 7, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask must be boolean"):
        model(x, t, attn_mask=torch.ones(8, 8))

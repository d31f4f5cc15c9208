"""model.cross_attn_dropout: its own value, reaching only the cross-attention, active only in train()."""
import torch

from ditlab.config import ModelConfig
from ditlab.models.dit import StreamSpec, build_dit

STREAM = StreamSpec("points", 3, 6, kind="tokens", positions="none")


def model_with(attn_dropout: float, cross_attn_dropout: float):
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=32, depth=2, num_heads=4, attn_dropout=attn_dropout,
                      cross_attn_dropout=cross_attn_dropout)
    model = build_dit(cfg, [STREAM], context_dim=8)
    with torch.no_grad():  # leave the adaLN-Zero identity, so attention reaches the output
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def inputs():
    g = torch.Generator().manual_seed(1)
    return ({"points": torch.randn(2, 6, 3, generator=g)}, {"points": torch.rand(2, generator=g)},
            torch.randn(2, 9, 8, generator=g))


def test_config_values_reach_their_modules():
    model = model_with(attn_dropout=0.1, cross_attn_dropout=0.3)
    for block in model.blocks:
        assert block.attn.dropout == 0.1
        assert block.cross_attn.dropout == 0.3


def test_cross_attention_dropout_is_active_in_train_only():
    model = model_with(attn_dropout=0.0, cross_attn_dropout=0.5)
    x, t, ctx = inputs()
    model.train()
    a, b = model(x, t, context=ctx)["points"], model(x, t, context=ctx)["points"]
    assert not torch.allclose(a, b)  # a fresh dropout mask per call
    model.eval()
    c, d = model(x, t, context=ctx)["points"], model(x, t, context=ctx)["points"]
    torch.testing.assert_close(c, d, rtol=0, atol=0)
    # In eval the dropout value has no effect at all: same output as a model without it.
    torch.testing.assert_close(c, model_with(0.0, 0.0).eval()(x, t, context=ctx)["points"])


def test_self_attention_dropout_alone_leaves_cross_attention_deterministic():
    """With only attn_dropout, the randomness in train() comes from self-attention: zeroing the
    self-attention output gate (adaLN gate) makes training-mode outputs repeatable again."""
    model = model_with(attn_dropout=0.5, cross_attn_dropout=0.0).train()
    x, t, ctx = inputs()
    assert not torch.allclose(model(x, t, context=ctx)["points"], model(x, t, context=ctx)["points"])
    dim = model.hidden_size
    with torch.no_grad():
        for block in model.blocks:  # gate of the self-attention branch = chunk 2 of the adaLN output
            block.adaLN.weight[2 * dim:3 * dim].zero_()
            block.adaLN.bias[2 * dim:3 * dim].zero_()
    torch.testing.assert_close(model(x, t, context=ctx)["points"], model(x, t, context=ctx)["points"], rtol=0, atol=0)

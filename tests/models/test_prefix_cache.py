"""DiT prefix caching: the leading condition streams computed once and reused (e.g. the clean context
of an in-context prompt across every sampler step) must give forward()'s outputs exactly."""
import pytest
import torch

from ditlab.models.dit import DiT, StreamSpec
from ditlab.tasks.icl.layout import Y_QUERY, icl_streams, prefix_attention_mask
from tests.models.test_dit import tiny


def _icl_inputs(B=3, d=3, n=5, per_token=False):
    g = torch.Generator().manual_seed(1)
    x = {"x": torch.randn(B, n, d, generator=g), "y_ctx": torch.randn(B, n, 1, generator=g),
         "y_query": torch.randn(B, n, 1, generator=g)}
    tq = torch.rand(B, n, generator=g) if per_token else torch.rand(B, generator=g)
    t = {"x": torch.zeros(B), "y_ctx": torch.zeros(B), "y_query": tq}
    return x, t


@pytest.mark.parametrize("per_token", [False, True])
def test_cached_prefix_gives_forwards_output(per_token):
    model = tiny(icl_streams(3, 5))
    x, t = _icl_inputs(per_token=per_token)
    mask = prefix_attention_mask(5)
    with torch.no_grad():
        full = model(x, t, attn_mask=mask)[Y_QUERY]
        cache = model.prefix_cache(x, t, attn_mask=mask)
        cached = model.forward_with_prefix(cache, x, t, attn_mask=mask)[Y_QUERY]
        # the cache does not read the generated stream: new query values, same cache
        x2 = dict(x, y_query=torch.randn_like(x["y_query"]))
        full2 = model(x2, t, attn_mask=mask)[Y_QUERY]
        cached2 = model.forward_with_prefix(cache, x2, t, attn_mask=mask)[Y_QUERY]
    assert torch.allclose(cached, full, atol=1e-5, rtol=1e-5)
    assert torch.allclose(cached2, full2, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, full2)  # the check above is not vacuous


def test_cached_prefix_with_image_streams_and_rope():
    """A low-resolution condition image before the target, rotary positions, a mask in which the
    condition attends only to itself: rope tables and modulation groups are sliced correctly."""
    cond, img = StreamSpec("cond", 3, 4, 2, predict=False, pos_scale=2.0), StreamSpec("image", 3, 8, 2)
    model = tiny([cond, img], pos_embed="rope", qk_norm=True)
    P, N = cond.num_tokens, cond.num_tokens + img.num_tokens
    mask = torch.ones(N, N, dtype=torch.bool)
    mask[:P, P:] = False
    g = torch.Generator().manual_seed(2)
    x = {"cond": torch.randn(2, 3, 4, 4, generator=g), "image": torch.randn(2, 3, 8, 8, generator=g)}
    t = {"cond": torch.zeros(2), "image": torch.rand(2, generator=g)}
    with torch.no_grad():
        full = model(x, t, attn_mask=mask)["image"]
        cached = model.forward_with_prefix(model.prefix_cache(x, t, attn_mask=mask), x, t, attn_mask=mask)["image"]
    assert torch.allclose(cached, full, atol=1e-5, rtol=1e-5)


def test_prefix_caching_refuses_what_it_cannot_cache():
    model = tiny(icl_streams(3, 5))
    x, t = _icl_inputs()
    with pytest.raises(ValueError, match="needs an attn_mask"):
        model.prefix_cache(x, t)
    leaky = prefix_attention_mask(5).clone()
    leaky[0, -1] = True  # x_1 would see a generated token
    with pytest.raises(ValueError, match="prefix token attends to a later token"):
        model.prefix_cache(x, t, attn_mask=leaky)
    cache = model.prefix_cache(x, t, attn_mask=prefix_attention_mask(5))
    x1, t1 = _icl_inputs(B=2)
    with pytest.raises(ValueError, match="prefix cache does not fit"):
        model.forward_with_prefix(cache, x1, t1, attn_mask=prefix_attention_mask(5))
    with pytest.raises(ValueError, match="leading condition streams"):
        tiny([StreamSpec("image", 3, 8, 2)]).split_prefix()
    with pytest.raises(ValueError, match="context set"):
        DiT(icl_streams(3, 5), hidden_size=32, depth=1, num_heads=4, context_dim=8).prefix_cache(
            x, t, attn_mask=prefix_attention_mask(5))

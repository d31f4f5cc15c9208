"""Token routing in training (model.route_fraction / model.route_blocks, ditlab.models.routing): routed tokens skip
the span and rejoin unchanged, the kept ones carry their own positions, masks and conditioning rows, eval runs
every token, and the settings it cannot serve are refused by name."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from ditlab.models.dit import DiT, StreamSpec
from ditlab.models.routing import RouteSpec, kept_count, parse_route, route, unroute

IMG = StreamSpec("image", 3, 8, 2)  # 16 tokens
COND = StreamSpec("cond", 3, 4, 2, predict=False)  # 4 tokens


def tiny(streams=(IMG,), seed=0, **kw):
    torch.manual_seed(seed)
    model = DiT(list(streams), hidden_size=32, depth=4, num_heads=2, num_classes=5, **kw)
    with torch.no_grad():  # adaLN-Zero would make every block the identity
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def inputs(streams=(IMG,), B=3):
    g = torch.Generator().manual_seed(1)
    x = {s.name: torch.randn(B, *s.shape, generator=g) for s in streams}
    t = {s.name: torch.rand(B, generator=g) for s in streams}
    return x, t, torch.tensor([0, 3, 4])[:B]


@pytest.mark.parametrize("fraction,blocks,message", [
    (0.5, "", "needs model.route_blocks"),
    (0.0, "1:3", "must lie in \\(0, 1\\)"),
    (1.0, "1:3", "must lie in \\(0, 1\\)"),
    (0.5, "1-3", "must be 'A:B'"),
    (0.5, "3:3", "0 <= A < B <= depth"),
    (0.5, "1:9", "0 <= A < B <= depth"),
])
def test_bad_settings_name_the_key(fraction, blocks, message):
    with pytest.raises(ValueError, match=message):
        parse_route(fraction, blocks, depth=4)
    assert parse_route(0.0, "", 4) is None and parse_route(0.5, "1:3", 4) == RouteSpec(0.5, 1, 3)


def test_routing_refuses_long_skips_and_non_token_condition_pathways():
    with pytest.raises(ValueError, match="long_skips"):
        tiny(route_fraction=0.5, route_blocks="1:3", long_skips=True)
    from ditlab.models.control import ConditionedDiT

    with pytest.raises(ValueError, match="cond_injection=cross"):
        ConditionedDiT([COND, IMG], "cond", "cross", hidden_size=32, depth=4, num_heads=2, route_fraction=0.5,
                       route_blocks="1:3")


def test_route_then_unroute_leaves_the_routed_tokens_untouched():
    torch.manual_seed(0)
    h, c = torch.randn(2, 10, 4), torch.randn(2, 1, 4)
    mask = torch.rand(2, 10, 10) > 0.3
    rope = (torch.randn(10, 2), torch.randn(10, 2))
    kept, c2, index, mask2, rope2, state = route(RouteSpec(0.4, 0, 1), h, c, None, mask, rope)
    n = kept_count(10, 0.4)
    assert kept.shape == (2, n, 4) and c2 is c and index is None and n == 6
    for b in range(2):
        k = state.keep[b]
        assert torch.equal(kept[b], h[b, k]) and torch.equal(mask2[b], mask[b][k][:, k])
        assert torch.equal(rope2[0][b, 0], rope[0][k])
    full, *_ = unroute(state, kept + 1.0)
    for b in range(2):
        moved = torch.zeros(10, dtype=torch.bool)
        moved[state.keep[b]] = True
        assert torch.equal(full[b, ~moved], h[b, ~moved]) and torch.equal(full[b, moved], h[b, moved] + 1)


def test_eval_runs_every_token_and_equals_the_unrouted_model():
    x, t, y = inputs()
    plain, routed = tiny().eval(), tiny(route_fraction=0.5, route_blocks="1:3").eval()
    with torch.no_grad():
        assert torch.equal(plain(x, t, labels=y)["image"], routed(x, t, labels=y)["image"])


def test_training_runs_the_span_on_the_kept_tokens_only():
    model = tiny(route_fraction=0.25, route_blocks="1:3").train()
    seen = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda mod, args, out, i=i: seen.append((i, args[0].shape[1])))
    x, t, y = inputs()
    out = model(x, t, labels=y)["image"]
    assert out.shape == (3, 3, 8, 8)
    assert seen == [(0, 16), (1, 12), (2, 12), (3, 16)]  # 16 - round(0.25 * 16) kept in blocks 1 and 2
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("case", ["one_stream", "streams_rope_class_tokens_mask"])
def test_keeping_every_token_is_the_unrouted_forward(case):
    """A fraction that keeps all 16 (or 20) tokens keeps them in order: every per-token row the span uses (the
    conditioning of each stream / class token, rotary tables, the padding mask) must then match the full pass."""
    if case == "one_stream":
        streams, kw, extra = (IMG,), {}, {}
    else:
        streams, kw = (COND, IMG), dict(pos_embed="rope", class_tokens=2)
        extra = {"token_mask": {"cond": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]).bool()}}
    x, t, y = inputs(streams)
    plain = tiny(streams, **kw).train()
    routed = tiny(streams, route_fraction=0.01, route_blocks="1:3", **kw).train()  # round(0.01 * N) = 0 routed
    out_plain = plain(x, t, labels=y, **extra)["image"]
    out_routed = routed(x, t, labels=y, **extra)["image"]
    torch.testing.assert_close(out_routed, out_plain, rtol=1e-5, atol=1e-6)


def test_a_routed_model_trains_in_one_graph():
    torch._dynamo.reset()
    model = tiny(route_fraction=0.5, route_blocks="1:3").train()
    x, t, y = inputs()
    counter = CompileCounter()
    net = torch.compile(model, backend=counter, fullgraph=True)
    net(x, t, labels=y)["image"].sum().backward()
    net(x, t, labels=y)["image"].sum().backward()  # new random tokens, same graph
    assert counter.frame_count == 1
    torch._dynamo.reset()



def test_flops_count_the_span_at_the_kept_tokens():
    """torch's matmul count of a training forward (routed) against the same model in eval (every token): the
    formula's difference must match it, plus the attention scores and values CPU SDPA does not report."""
    from torch.utils.flop_counter import FlopCounterMode

    from ditlab.flops import dit_forward_flops, train_flops_per_image

    model = tiny(route_fraction=0.25, route_blocks="1:3")
    x, t, y = inputs(B=1)
    counted = {}
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x, t, labels=y[:1])
        counted[mode] = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "attention" not in str(k))
    T, Tr, D, span = 16, 12, 32, 2
    attention = span * 2 * 2 * (T * T - Tr * Tr) * D  # scores + values, 2 FLOPs a MAC
    assert counted["eval"] - counted["train"] + attention == \
        dit_forward_flops(model) - dit_forward_flops(model, routed=True)
    assert train_flops_per_image(model) == 3 * dit_forward_flops(model, routed=True) < 3 * dit_forward_flops(model)

"""Token -> group maps as runs of consecutive tokens (ditlab.models.token_groups): the spread modulation equals
the indexed gather's, values and gradients, in the helper and in whole models (several streams, class tokens,
the ControlNet branch), and it traces in one graph. Prefix caching, which slices the runs at the prefix, is
tests/models/test_prefix_cache.py's image-stream case."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from ditlab.models import token_groups
from ditlab.models.dit import DiT, StreamSpec
from ditlab.models.token_groups import TokenGroups, gather_groups, index_tensor, runs_of, slice_groups


def groups(lengths, first=0):
    index = torch.cat([torch.full((n,), first + i, dtype=torch.long) for i, n in enumerate(lengths)])
    return TokenGroups(index, runs_of(lengths, first))


def test_runs_of_lengths_skip_empty_streams():
    assert runs_of([3, 0, 2]) == ((0, 0, 3), (2, 3, 5))
    assert runs_of([2, 4], first_group=1) == ((1, 0, 2), (2, 2, 6))


@pytest.mark.parametrize("lengths", [[5], [2, 6], [1, 3, 4], [2, 0, 3, 1]])
def test_spread_equals_the_gather_in_values_and_gradients(lengths):
    g = groups(lengths)
    G, N = max(i for i, n in enumerate(lengths) if n) + 1, sum(lengths)
    t = torch.randn(3, G, 7, requires_grad=True)
    t2 = t.detach().clone().requires_grad_()
    w = torch.randn(3, N, 7)
    spread = gather_groups(t, g)
    gathered = t2[:, g.index]
    torch.testing.assert_close(spread.expand(3, N, 7), gathered, rtol=0, atol=0)  # the same elements
    (spread * w).sum().backward()
    (gathered * w).sum().backward()
    torch.testing.assert_close(t.grad, t2.grad)
    if len(g.runs) == 1:
        assert spread.shape == (3, 1, 7)  # one run: the group's row, broadcast


def test_slice_matches_slicing_the_index():
    g = groups([2, 4, 16])  # e.g. two class tokens, a 4-token condition, a 16-token target
    for start, end in [(0, 22), (0, 2), (2, 6), (6, 22), (1, 7), (3, 4), (5, 22)]:
        s = slice_groups(g, start, end)
        assert torch.equal(s.index, g.index[start:end])
        rebuilt = torch.cat([torch.full((e - b,), grp) for grp, b, e in s.runs])
        assert torch.equal(rebuilt, s.index), (start, end, s.runs)
    assert slice_groups(None, 0, 3) is None
    assert torch.equal(slice_groups(torch.arange(5), 1, 3), torch.tensor([1, 2]))
    assert index_tensor(g) is g.index and index_tensor(None) is None


def test_many_runs_fall_back_to_the_gather(monkeypatch):
    g = groups([1] * 12)  # a scattered map: more runs than MAX_RUNS
    t = torch.randn(2, 12, 3)
    torch.testing.assert_close(gather_groups(t, g), t[:, g.index], rtol=0, atol=0)
    monkeypatch.setattr(token_groups, "MAX_RUNS", 0)
    torch.testing.assert_close(gather_groups(t, groups([4, 8])), t[:, groups([4, 8]).index], rtol=0, atol=0)


# ---- whole models: runs against the indexed gather (MAX_RUNS = 0 forces the gather) ----------------------
COND = StreamSpec("cond", 3, 4, 2, predict=False)
IMG = StreamSpec("image", 3, 8, 2)


def tiny(**kw):
    torch.manual_seed(0)
    m = DiT([COND, IMG], hidden_size=32, depth=2, num_heads=2, **kw)
    with torch.no_grad():  # adaLN-Zero would hide the modulation: every output zero at init
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def inputs(B=3):
    g = torch.Generator().manual_seed(1)
    x = {"cond": torch.randn(B, 3, 4, 4, generator=g), "image": torch.randn(B, 3, 8, 8, generator=g)}
    t = {"cond": torch.rand(B, generator=g), "image": torch.rand(B, generator=g)}
    return x, t


def out_and_grads(model, x, t, **kw):
    model.zero_grad(set_to_none=True)
    out = model(x, t, **kw)["image"]
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kw", [{}, {"class_tokens": 2, "num_classes": 5}], ids=["streams", "class_tokens"])
def test_models_spread_modulation_as_the_gather_did(kw, monkeypatch):
    model = tiny(**kw)
    x, t = inputs()
    extra = {"labels": torch.tensor([0, 3, 4])} if kw else {}
    runs, g_runs = out_and_grads(model, x, t, **extra)
    monkeypatch.setattr(token_groups, "MAX_RUNS", 0)
    gather, g_gather = out_and_grads(model, x, t, **extra)
    torch.testing.assert_close(runs, gather, rtol=0, atol=0)  # the same elements: the same forward, bitwise
    for name in g_gather:
        torch.testing.assert_close(g_runs[name], g_gather[name], rtol=1e-5, atol=1e-7, msg=name)


def test_branch_injection_spreads_its_two_runs_as_the_gather_did(monkeypatch):
    from ditlab.config import ModelConfig, TaskConfig
    from ditlab.tasks.superres.model import build_superres_model

    torch.manual_seed(0)
    task = TaskConfig(kind="superres", factor=2, cond_injection="branch", branch_blocks=2)
    model = build_superres_model(ModelConfig(arch="DiT-S/2", hidden_size=32, depth=3, num_heads=2), 8, 3, 2, task)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(2)
    x = {"image": torch.randn(2, 3, 8, 8, generator=g), "lowres": torch.randn(2, 3, 4, 4, generator=g)}
    t = {"image": torch.rand(2, generator=g), "lowres": torch.zeros(2)}
    runs, g_runs = out_and_grads(model, x, t)
    monkeypatch.setattr(token_groups, "MAX_RUNS", 0)
    gather, g_gather = out_and_grads(model, x, t)
    torch.testing.assert_close(runs, gather, rtol=0, atol=0)
    for name in g_gather:
        torch.testing.assert_close(g_runs[name], g_gather[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_multi_stream_model_traces_in_one_graph():
    torch._dynamo.reset()
    model = tiny()
    x, t = inputs()
    counter = CompileCounter()
    out = torch.compile(model, backend=counter, fullgraph=True)(x, t)["image"]
    out.sum().backward()
    assert counter.frame_count == 1
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fast", [False, True], ids=["eager_blocks", "fused_blocks"])
def test_compiled_on_the_gpu_the_runs_match_the_gather(fast, monkeypatch):
    """Inductor on the GPU (the superres study's path): the spread from runs against the indexed gather, forward and
    gradients, bf16 autocast, the fused adaLN path off and on."""
    from ditlab.models import kernels

    model = tiny().cuda()
    kernels.set_fast_kernels(model, fast and kernels.triton_available())
    x, t = inputs()
    x, t = {k: v.cuda() for k, v in x.items()}, {k: v.cuda() for k, v in t.items()}

    def run():
        torch._dynamo.reset()
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = torch.compile(model)(x, t)["image"]
        (out.float() * torch.linspace(-1, 1, out.numel(), device="cuda").view_as(out)).sum().backward()
        return out.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    runs, g_runs = run()
    monkeypatch.setattr(token_groups, "MAX_RUNS", 0)
    gather, g_gather = run()
    torch._dynamo.reset()
    torch.testing.assert_close(runs, gather, rtol=2e-2, atol=2e-3)
    # Gradients in norm, not element by element: the two graphs fuse and order their bf16 reductions differently,
    # and a bias gradient sums over every token, so its elements near zero carry noise of the gradient's scale
    # (H100, 2026-12-06: patch_embed's bias differed by up to 0.012 at a scale of 4.8, while each path was 0.016
    # from the fp32 gradient). A wrong spread is off by the gradient's whole size.
    for name in g_gather:
        a, b = g_runs[name].double(), g_gather[name].double()
        diff, scale = (a - b).norm().item(), b.norm().item()
        assert diff <= 2e-2 * scale + 1e-4, f"{name}: gradients differ by {diff:.3g} in norm, at a norm of {scale:.3g}"

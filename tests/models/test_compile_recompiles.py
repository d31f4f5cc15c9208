"""Issue 7, item 18: torch.compile over 12 sequence lengths builds at most 2 graphs.

Dynamo's default (automatic dynamic shapes) compiles the first shape statically and, on the first
new length, one graph with a symbolic length; any code that reads a length as a Python value
(``.item()``, ``int(n)``, a branch on the size) would compile again for every length. Graphs are
counted with dynamo's CompileCounter (the eager backend: it traces, it does not generate code),
which keeps this CPU test to a few seconds; Inductor on the GPU is in scripts/reliability_gpu.py.
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from ditlab.models.attention import Attention
from ditlab.models.dit import DiT, StreamSpec

from tests.script_modules import load_script

LENGTHS = range(5, 17)  # 12 lengths
MAX_GRAPHS = 2


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Graphs cached by another test would hide recompiles (or add some)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def key_padding(m: int) -> torch.Tensor:
    """(2, m): sample 0 has 2 padded keys, sample 1 none."""
    return torch.arange(m)[None] < torch.tensor([m - 2, m])[:, None]


def test_cross_attention_over_12_context_lengths():
    torch.manual_seed(0)
    attn = Attention(32, 4, kv_dim=24, qk_norm=True).eval()
    counter = CompileCounter()
    compiled = torch.compile(attn, backend=counter)
    for m in LENGTHS:
        x, ctx, mask = torch.randn(2, 5, 32), torch.randn(2, m, 24), key_padding(m)
        torch.testing.assert_close(compiled(x, context=ctx, mask=mask), attn(x, context=ctx, mask=mask))
    assert counter.frame_count <= MAX_GRAPHS, f"{counter.frame_count} graphs for {len(LENGTHS)} lengths"


def test_self_attention_over_12_sequence_lengths_with_rope():
    torch.manual_seed(0)
    attn = Attention(32, 4).eval()
    counter = CompileCounter()
    compiled = torch.compile(attn, backend=counter)
    for n in LENGTHS:
        angles = torch.arange(n, dtype=torch.float32)[:, None] * torch.linspace(0.1, 1.0, 4)
        x, rope = torch.randn(2, n, 32), (angles.cos(), angles.sin())
        torch.testing.assert_close(compiled(x, mask=key_padding(n), rope=rope), attn(x, mask=key_padding(n), rope=rope))
    assert counter.frame_count <= MAX_GRAPHS, f"{counter.frame_count} graphs for {len(LENGTHS)} lengths"


@pytest.mark.parametrize("masked", [True, False], ids=["padded", "full_length"])
def test_dit_with_a_context_set_of_12_lengths(masked):
    """The whole network, context dropout included (with a mask its null element is built with arange(M);
    without one, a full-length set, the null fills every slot)."""
    torch.manual_seed(0)
    model = DiT([StreamSpec("image", 3, 8, 2)], hidden_size=32, depth=2, num_heads=4, context_dim=6).eval()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    for m in LENGTHS:
        x, t = {"image": torch.randn(2, 3, 8, 8)}, {"image": torch.rand(2)}
        kw = dict(context=torch.randn(2, m, 6), context_mask=key_padding(m) if masked else None,
                  context_drop=torch.tensor([False, True]))
        torch.testing.assert_close(compiled(x, t, **kw)["image"], model(x, t, **kw)["image"])
    assert counter.frame_count <= MAX_GRAPHS, f"{counter.frame_count} graphs for {len(LENGTHS)} lengths"


def test_dit_with_every_architecture_option_over_12_context_lengths():
    """SwiGLU, RMSNorm, long skips and class tokens (label only in the tokens, CFG drop): the options branch on
    Python ints only, so they add no graph."""
    torch.manual_seed(0)
    model = DiT([StreamSpec("image", 3, 8, 2)], hidden_size=32, depth=3, num_heads=4, context_dim=6, num_classes=5,
                mlp="swiglu", norm="rmsnorm", long_skips=True, class_tokens=2, label_in_adaln=False).eval()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    for m in LENGTHS:
        x, t = {"image": torch.randn(2, 3, 8, 8)}, {"image": torch.rand(2)}
        kw = dict(context=torch.randn(2, m, 6), context_mask=key_padding(m), labels=torch.tensor([m % 5, 1]),
                  label_drop=torch.tensor([m % 2 == 0, False]))
        torch.testing.assert_close(compiled(x, t, **kw)["image"], model(x, t, **kw)["image"])
    assert counter.frame_count <= MAX_GRAPHS, f"{counter.frame_count} graphs for {len(LENGTHS)} lengths"


def test_the_counter_sees_recompiles():
    """Negative control: with dynamic shapes off, every new length is a new graph."""
    counter = CompileCounter()
    compiled = torch.compile(Attention(32, 4).eval(), backend=counter, dynamic=False)
    for n in LENGTHS[:4]:
        compiled(torch.randn(2, n, 32), mask=key_padding(n))
    assert counter.frame_count == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_inductor_over_12_context_lengths():
    script = load_script("reliability_gpu")
    result = script.check_compile_lengths(torch.device("cuda"), "inductor")
    assert result["passed"], result

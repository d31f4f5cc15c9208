"""Every global a Triton kernel reads is a ``tl.constexpr``. The compiler refuses any other global ("Cannot access
global variable ... from within @jit'ed function"), but Triton's interpreter reads plain Python floats happily,
so CI's interpreter runs passed a GELU kernel whose constants were plain floats, and it failed on its first GPU
call (fifteenth session). This check needs Triton installed, not a GPU."""
from __future__ import annotations

import importlib

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

MODULES = ["ditlab.models.kernels.adaln_triton", "ditlab.models.kernels.mlp_triton"]


def is_kernel(obj) -> bool:
    """A @triton.jit function: a JITFunction, or under TRITON_INTERPRET=1 the interpreter's wrapper."""
    return type(obj).__module__.startswith("triton") and callable(getattr(obj, "fn", None))


def kernels_of(module):
    return {name: obj for name, obj in vars(module).items() if is_kernel(obj)}


def plain_globals(jit_fn) -> list[str]:
    fn = jit_fn.fn
    while not hasattr(fn, "__code__"):  # an autotuned kernel wraps the jit function, which wraps the Python one
        fn = fn.fn
    names = set(fn.__code__.co_names)
    for const in fn.__code__.co_consts:  # nested code objects (comprehensions, lambdas)
        if hasattr(const, "co_names"):
            names |= set(const.co_names)
    return sorted(n for n in names if isinstance(fn.__globals__.get(n), (bool, int, float))
                  and not isinstance(fn.__globals__.get(n), tl.constexpr))


@pytest.mark.parametrize("module_name", MODULES)
def test_kernels_read_only_constexpr_globals(module_name):
    module = importlib.import_module(module_name)
    found = kernels_of(module)
    assert found, f"no @triton.jit kernels found in {module_name}"
    bad = {name: plain_globals(k) for name, k in found.items() if plain_globals(k)}
    assert not bad, f"plain Python numbers read inside kernels (make them tl.constexpr): {bad}"


def test_the_check_sees_a_plain_float(tmp_path, monkeypatch):
    (tmp_path / "plain_float_kernel.py").write_text("import triton\nC = 0.5\n\n\n@triton.jit\ndef k(X):\n    x = C\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # a real file: @triton.jit reads the kernel's source
    module = importlib.import_module("plain_float_kernel")
    assert plain_globals(module.k) == ["C"]

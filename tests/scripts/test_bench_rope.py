"""scripts/bench_rope.py: every way it times of writing RoPE computes the library's rotation (outputs and the
gradient of the qkv projection), so its GPU timings compare like with like."""
import pytest
import torch

from tests.script_modules import load_script


@pytest.fixture(scope="module")
def bench_rope():
    return load_script("bench_rope")


def test_every_variant_matches_the_library_rotation(bench_rope):
    rows = bench_rope.main(["--smoke"])
    by_variant = {r["variant"]: r for r in rows}
    assert set(by_variant) == set(bench_rope.VARIANTS)
    for name, row in by_variant.items():
        if name == "none":
            assert "max_abs_diff_out" not in row  # nothing to compare: no rotation
            continue
        assert row["max_abs_diff_out"] < 1e-5, name
        assert row["max_abs_diff_grad"] < 1e-5, name


def test_the_comparison_would_see_a_wrong_rotation(bench_rope):
    """The check is not vacuous: the rotation by the opposite angle differs from the library's."""
    args = bench_rope.make_inputs(2, 16, 32, 2, torch.float32, torch.device("cpu"))
    ref_outs, ref_grad = bench_rope.run_once(bench_rope.qk_step(bench_rope.rotate_pairs, 2), *args)
    wrong = bench_rope.qk_step(lambda x, cos, sin: bench_rope.rotate_pairs(x, cos, -sin), 2)
    outs, grad = bench_rope.run_once(wrong, *args)
    diffs = bench_rope.differences("pairs", outs, grad, ref_outs, ref_grad, 2)
    assert diffs["max_abs_diff_out"] > 1e-2 and diffs["max_abs_diff_grad"] > 1e-2


def test_the_half_permutation_pairs_the_halves_as_the_interleaved_pairs(bench_rope):
    order = bench_rope.half_permutation(8)
    assert order.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]  # halves (i, i + 4) hold the pairs (2i, 2i + 1)

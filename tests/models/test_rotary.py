"""ditlab.models.rotary: the rotation keeps each pair's norm, is the identity at angle 0 and undone by the opposite
angle, and makes q_m . k_n depend on the offset m - n only (what rotary positions are for). The other ways of
writing it that scripts/bench_rope.py times are checked against it in tests/scripts/test_bench_rope.py."""
import torch

from ditlab.models.embed import rope_2d
from ditlab.models.rotary import apply_rope


def _inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    cos, sin = rope_2d(4, 4, 16)  # 16 tokens, head dim 16
    x = torch.randn(2, 3, 16, 16, generator=g).to(dtype)
    return x, cos, sin


def test_the_rotation_rotates_pairs():
    """Norms of each pair are kept, and angle 0 is the identity: a wrong sign or pairing fails one of them."""
    x, cos, sin = _inputs()
    out = apply_rope(x, cos, sin)
    pair_norm = lambda t: t.unflatten(-1, (-1, 2)).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(pair_norm(out), pair_norm(x))
    assert not torch.allclose(out, x)
    torch.testing.assert_close(apply_rope(x, torch.ones_like(cos), torch.zeros_like(sin)), x)
    # the rotation by theta, then by -theta, is the identity
    torch.testing.assert_close(apply_rope(out, cos, -sin), x, rtol=0, atol=1e-5)


def test_scores_depend_on_the_offset_only():
    """The same q and k vectors at every position: q_m . k_n after the rotation is a function of m - n along a
    row of the grid (the first token of a row against each later one, for two rows)."""
    g = torch.Generator().manual_seed(2)
    cos, sin = rope_2d(4, 4, 16)
    q = torch.randn(16, generator=g).expand(1, 1, 16, 16)
    k = torch.randn(16, generator=g).expand(1, 1, 16, 16)
    scores = apply_rope(q, cos, sin)[0, 0] @ apply_rope(k, cos, sin)[0, 0].T  # (16, 16)
    torch.testing.assert_close(scores[0, 0:4], scores[4, 4:8])  # row 0 and row 1: offsets 0..3 along x
    assert not torch.allclose(scores[0, 0:4], scores[0, 0:1].expand(4))  # and the offset matters


def test_bf16_inputs_come_back_in_bf16():
    x, cos, sin = _inputs(dtype=torch.bfloat16)
    assert apply_rope(x, cos, sin).dtype == torch.bfloat16

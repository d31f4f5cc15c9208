import math

import pytest
import torch

from ditlab.tasks.scene.scenes import (
    KINDS,
    Primitive,
    collate,
    coverage,
    make_batch,
    make_scene,
    mean_surface_distance,
    random_primitive,
    random_rotation,
    sample_surface,
    surface_distance,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def posed(kind, seed, size=(0.1, 0.4)):
    g = gen(seed)
    return random_primitive(g, kind, size=size, translation=torch.randn(3, generator=g)), g


def test_random_rotation_is_proper_orthonormal():
    g = gen(1)
    for _ in range(10):
        r = random_rotation(g)
        assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-5)
        assert torch.det(r).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_samples_lie_on_surface_with_unit_normals(kind, seed):
    prim, g = posed(kind, seed)
    pts, nrm = sample_surface(prim, 2000, g)
    assert pts.shape == nrm.shape == (2000, 3)
    assert surface_distance(prim, pts).max() < 1e-5
    assert torch.allclose(nrm.norm(dim=1), torch.ones(2000), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 3])
def test_pushed_out_along_normal_has_distance_d(kind, seed):
    # Convex shapes: any point pushed along an outward normal is exactly d away, edges included.
    prim, g = posed(kind, seed)
    pts, nrm = sample_surface(prim, 2000, g)
    d = 0.01
    assert torch.allclose(surface_distance(prim, pts + d * nrm), torch.full((2000,), d), atol=1e-5)


def _gaps_inside(prim, points):
    """Local-frame distances from an inside point to each face family (box: 3, cylinder: 2)."""
    p = prim.to_local(points)
    if prim.kind == "box":
        return prim.params - p.abs()
    rho = p[:, :2].norm(dim=1)
    return torch.stack([prim.params[0] - rho, prim.params[1] - p[:, 2].abs()], dim=1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 4])
def test_pushed_in_away_from_edges_has_distance_d(kind, seed):
    prim, g = posed(kind, seed, size=(0.2, 0.4))
    pts, nrm = sample_surface(prim, 4000, g)
    d = 0.01
    inner = pts - d * nrm
    if kind == "sphere":
        keep = torch.ones(len(pts), dtype=torch.bool)
    else:
        # Keep points whose second-nearest face is well beyond d (i.e. away from edges).
        keep = _gaps_inside(prim, inner).sort(dim=1).values[:, 1] > 2 * d
    assert keep.float().mean() > 0.5
    dist = surface_distance(prim, inner[keep])
    assert torch.allclose(dist, torch.full_like(dist, d), atol=1e-5)


def test_sphere_far_points_match_analytic():
    prim, g = posed("sphere", 5)
    r = float(prim.params[0])
    dirs = torch.randn(100, 3, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    radii = torch.rand(100, generator=g) * 5
    pts = prim.translation + dirs * radii[:, None]
    assert torch.allclose(surface_distance(prim, pts), (radii - r).abs(), atol=1e-5)
    assert surface_distance(prim, prim.translation[None]).item() == pytest.approx(r, abs=1e-6)


def test_box_and_cylinder_analytic_points():
    eye = torch.eye(3)
    box = Primitive("box", torch.tensor([0.1, 0.2, 0.3]), eye, torch.zeros(3))
    pts = torch.tensor([[1.1, 0.0, 0.0], [0.4, 0.5, 0.6], [0.0, 0.0, 0.0], [0.05, 0.0, 0.0]])
    want = torch.tensor([1.0, math.sqrt(0.09 * 3), 0.1, 0.05])
    assert torch.allclose(surface_distance(box, pts), want, atol=1e-6)
    cyl = Primitive("cylinder", torch.tensor([0.2, 0.5]), eye, torch.zeros(3))
    pts = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.1, 0.9], [0.6, 0.0, 0.8], [0.1, 0.0, 0.0], [0.0, 0.0, 0.45]])
    want = torch.tensor([0.3, 0.4, 0.5, 0.1, 0.05])
    assert torch.allclose(surface_distance(cyl, pts), want, atol=1e-6)


def test_box_faces_sampled_by_area():
    h = torch.tensor([0.1, 0.2, 0.4])
    prim = Primitive("box", h, random_rotation(gen(6)), torch.tensor([0.3, -0.2, 0.1]))
    n = 60000
    _, nrm = sample_surface(prim, n, gen(7))
    local = nrm @ prim.rotation  # back to the local frame
    axis = local.abs().argmax(dim=1)
    sign = local[torch.arange(n), axis] > 0
    area = 4 * h.prod() / h  # per face, normal to axis a
    want = area / (2 * area.sum())
    for a in range(3):
        for s in (False, True):
            frac = ((axis == a) & (sign == s)).float().mean().item()
            assert frac == pytest.approx(want[a].item(), abs=0.01)


def test_cylinder_caps_vs_side_by_area_and_uniform_caps():
    r, hh = 0.3, 0.1
    prim = Primitive("cylinder", torch.tensor([r, hh]), random_rotation(gen(8)), torch.zeros(3))
    n = 60000
    pts, nrm = sample_surface(prim, n, gen(9))
    local_n = nrm @ prim.rotation
    cap = local_n[:, 2].abs() > 0.5
    want_cap = 2 * math.pi * r * r / (2 * math.pi * r * r + 4 * math.pi * r * hh)
    assert cap.float().mean().item() == pytest.approx(want_cap, abs=0.01)
    rho = prim.to_local(pts[cap])[:, :2].norm(dim=1)
    # Uniform in the disc: half the cap area lies within r / sqrt(2).
    assert (rho < r / math.sqrt(2)).float().mean().item() == pytest.approx(0.5, abs=0.015)


def test_make_scene_ranges_and_placement():
    g = gen(10)
    for _ in range(20):
        s = make_scene(g, num_objects=(2, 4), points_per_object=(10, 20), extent=1.0)
        k = len(s.primitives)
        assert 1 <= k <= 4
        counts = torch.bincount(s.object_id, minlength=k)
        assert len(counts) == k and counts.min() >= 10 and counts.max() <= 20
        assert s.points.shape == s.normals.shape == (len(s.object_id), 3)
        for i, p in enumerate(s.primitives):
            assert p.translation.abs().max() + p.bounding_radius <= 1.0 + 1e-6
            assert surface_distance(p, s.points[s.object_id == i]).max() < 1e-5
            for q in s.primitives[i + 1:]:
                assert (p.translation - q.translation).norm() >= p.bounding_radius + q.bounding_radius


def test_collate_padding_mask_and_target_flag():
    g = gen(11)
    scenes = [make_scene(g) for _ in range(4)]
    targets = [len(s.primitives) - 1 for s in scenes]
    b = collate(scenes, targets, 32, g)
    lengths = [len(s.points) for s in scenes]
    assert b.features.shape == (4, max(lengths), 4)
    assert b.mask.sum(dim=1).tolist() == lengths
    assert b.target.tolist() == targets
    assert b.target_points.shape == b.target_normals.shape == (4, 32, 3)
    for i, (s, t) in enumerate(zip(scenes, targets)):
        n = lengths[i]
        assert b.mask[i, :n].all() and not b.mask[i, n:].any()
        assert torch.equal(b.features[i, :n, :3], s.points)
        assert torch.equal(b.features[i, n:], torch.zeros_like(b.features[i, n:]))
        assert torch.equal(b.features[i, :n, 3], (s.object_id == t).float())
        assert b.target_primitives[i] is s.primitives[t]
        assert surface_distance(s.primitives[t], b.target_points[i]).max() < 1e-5
    assert min(lengths) < max(lengths)  # padding was actually exercised


def test_collate_rejects_bad_targets():
    g = gen(12)
    s = make_scene(g)
    with pytest.raises(ValueError):
        collate([s], [len(s.primitives)], 8, g)
    with pytest.raises(ValueError):
        collate([s, s], [0], 8, g)


def test_make_batch_is_deterministic():
    a = make_batch(3, gen(13), num_target_points=16)
    b = make_batch(3, gen(13), num_target_points=16)
    c = make_batch(3, gen(14), num_target_points=16)
    for f in ("features", "mask", "target", "target_points", "target_normals"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert not torch.equal(a.target_points, c.target_points)


def test_metrics_reference_samples_score_perfectly():
    g = gen(15)
    b = make_batch(4, g, num_target_points=2048)
    assert mean_surface_distance(b.target_points, b.target_primitives).max() < 1e-5
    assert coverage(b.target_points, b.target_primitives, generator=g).min() > 0.97


def test_metrics_collapsed_points_have_low_coverage():
    g = gen(16)
    b = make_batch(4, g, num_target_points=256)
    collapsed = b.target_points[:, :1].expand(-1, 256, -1)
    assert mean_surface_distance(collapsed, b.target_primitives).max() < 1e-5  # precise but...
    assert coverage(collapsed, b.target_primitives, generator=g).max() < 0.25  # ...no coverage


def test_metrics_wrong_object_negative_control():
    g = gen(17)
    scenes = [make_scene(g, num_objects=(3, 4)) for _ in range(4)]
    right = collate(scenes, [0] * 4, 512, g)
    wrong = collate(scenes, [1] * 4, 512, g)
    dist = mean_surface_distance(wrong.target_points, right.target_primitives)
    assert dist.min() > 0.05
    assert coverage(wrong.target_points, right.target_primitives, generator=g).max() < 0.05


def test_coverage_default_generator_is_deterministic():
    b = make_batch(2, gen(18), num_target_points=64)
    assert torch.equal(coverage(b.target_points, b.target_primitives), coverage(b.target_points, b.target_primitives))

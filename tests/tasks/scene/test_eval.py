"""Scene metrics and baselines: exact distances, precision / coverage, and the baselines' meaning."""
import torch

from ditlab.config import SceneConfig
from ditlab.tasks.scene.eval import baseline_points, point_metrics
from ditlab.tasks.scene.data import make_scene_set
from ditlab.tasks.scene.scenes import sample_surface


def scenes(num=4):
    cfg = SceneConfig(objects=(2, 3), points_per_object=(16, 32), num_target_points=32, target_pool=32)
    return make_scene_set(cfg, num, 0, 32)


def test_points_on_the_surface_score_zero_distance_and_full_precision():
    s = scenes()
    g = torch.Generator().manual_seed(0)
    on = torch.stack([sample_surface(p, 1000, g)[0] for p in s.targets])
    m = point_metrics(on, s, radius=0.05)
    assert m["distance"] < 1e-5 and m["precision"] == 1.0
    assert m["coverage"] > 0.95  # 1000 points cover these small objects at radius 0.05


def test_points_pushed_off_the_surface_score_the_push():
    """Moving surface points outward along their normals by d gives distance exactly d (convex shapes)."""
    s = scenes()
    g = torch.Generator().manual_seed(1)
    pts, normals = zip(*(sample_surface(p, 50, g) for p in s.targets))
    for d, precise in ((0.03, 1.0), (0.08, 0.0)):
        m = point_metrics(torch.stack(pts) + d * torch.stack(normals), s, radius=0.05)
        assert abs(m["distance"] - d) < 1e-5 and abs(m["distance_median"] - d) < 1e-5
        assert m["precision"] == precise


def test_a_collapsed_generator_has_low_coverage():
    s = scenes()
    g = torch.Generator().manual_seed(2)
    one_spot = torch.stack([sample_surface(p, 1, g)[0].expand(64, 3) for p in s.targets])
    spread = torch.stack([sample_surface(p, 64, g)[0] for p in s.targets])
    collapsed, good = point_metrics(one_spot, s, 0.05), point_metrics(spread, s, 0.05)
    assert collapsed["distance"] < 1e-5  # the distance alone cannot tell
    assert collapsed["coverage"] < 0.5 * good["coverage"]


def test_baselines():
    s = scenes(6)
    b = baseline_points(s, 20, seed=0)
    assert set(b) == {"ground_truth", "scene_points", "target_box", "nearest_scene_point"}
    assert all(v.shape == (6, 20, 3) for v in b.values())
    assert torch.equal(b["target_box"], baseline_points(s, 20, seed=0)["target_box"])  # deterministic
    truth, scene = point_metrics(b["ground_truth"], s, 0.05), point_metrics(b["scene_points"], s, 0.05)
    assert truth["distance"] < 1e-5 and scene["distance"] > 10 * 0.01
    for i in range(6):
        target = s.features[i][s.mask[i] & (s.features[i, :, 3] == 1), :3]
        box = b["target_box"][i]
        assert (box >= target.min(0).values - 1e-6).all() and (box <= target.max(0).values + 1e-6).all()
        real = s.features[i][s.mask[i], :3]  # scene_points are points of the scene cloud
        assert (b["scene_points"][i][:, None] == real[None]).all(-1).any(-1).all()
        # nearest_scene_point: each box point moved to the scene point nearest to it
        nearest = real[((box[:, None] - real[None]) ** 2).sum(-1).argmin(1)]
        torch.testing.assert_close(b["nearest_scene_point"][i], nearest)

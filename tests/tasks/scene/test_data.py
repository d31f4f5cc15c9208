"""Fixed scene sets: deterministic, variable size with a consistent mask, fresh target draws."""
import pytest
import torch

from ditlab.config import SceneConfig
from ditlab.tasks.scene.data import (SceneTrainData, draw_from_pool, load_eval_scenes, make_scene_set)
from ditlab.tasks.scene.scenes import surface_distance


def small_cfg(**kw):
    base = dict(objects=(2, 3), points_per_object=(8, 24), num_target_points=6, target_pool=16)
    return SceneConfig(**{**base, **kw})


def test_same_seed_same_scenes_other_seed_other_scenes():
    cfg = small_cfg()
    a, b, c = make_scene_set(cfg, 5, 3, 16), make_scene_set(cfg, 5, 3, 16), make_scene_set(cfg, 5, 4, 16)
    assert torch.equal(a.features, b.features) and torch.equal(a.surface, b.surface)
    assert not torch.equal(a.features[:, :10], c.features[:, :10])


def test_padding_mask_and_target_flag_are_consistent():
    s = make_scene_set(small_cfg(), 12, 0, 16)
    sizes = s.mask.sum(1)
    assert sizes.min() < sizes.max() == s.features.shape[1]  # sizes vary; the longest is unpadded
    # Real points come first, padding is zero, and every scene marks at least one target point.
    assert torch.equal(s.mask, torch.arange(s.mask.shape[1])[None] < sizes[:, None])
    assert (s.features[~s.mask] == 0).all()
    flags = s.features[..., 3]
    assert ((flags == 0) | (flags == 1)).all() and ((flags * s.mask).sum(1) >= 8).all()
    for i, prim in enumerate(s.targets):
        # flagged points and the pool lie on the target's surface; unflagged ones do not
        on = s.features[i][s.mask[i] & (flags[i] == 1), :3]
        off = s.features[i][s.mask[i] & (flags[i] == 0), :3]
        assert surface_distance(prim, on).max() < 1e-4
        assert surface_distance(prim, off).min() > 1e-3
        assert surface_distance(prim, s.surface[i]).max() < 1e-4


def test_draw_from_pool_gives_distinct_pool_members_and_follows_the_global_rng():
    pool = torch.arange(2 * 10 * 3, dtype=torch.float32).view(2, 10, 3)
    torch.manual_seed(0)
    a = draw_from_pool(pool, 10)
    torch.manual_seed(0)
    b = draw_from_pool(pool, 10)
    assert torch.equal(a, b)
    for i in range(2):  # a permutation of the whole pool: every row once
        assert sorted(a[i, :, 0].tolist()) == pool[i, :, 0].tolist()
    c = draw_from_pool(pool, 4)
    assert c.shape == (2, 4, 3) and not torch.equal(c, a[:, :4])


def test_train_data_batch_and_info():
    data = SceneTrainData(make_scene_set(small_cfg(), 7, 0, 16), num_target_points=6)
    assert data.num_examples == 7
    assert data.info == {"num_target_points": 6, "context_channels": 4, "max_points": data.features.shape[1],
                         "num_scenes": 7}
    b = data.batch(torch.tensor([3, 1]))
    assert b["features"].shape == (2, data.features.shape[1], 4) and b["mask"].dtype == torch.bool
    assert b["target_points"].shape == (2, 6, 3)
    assert torch.equal(b["features"][0], data.features[3])
    assert surface_distance(data.scenes.targets[1], b["target_points"][1]).max() < 1e-4


def test_eval_scenes_are_held_out():
    cfg = small_cfg(seed=5, eval_seed=5)
    with pytest.raises(ValueError, match="scene.eval_seed"):
        load_eval_scenes(cfg, 3, 6)


@pytest.mark.parametrize("key,value,match", [
    ("objects", (0, 2), "scene.objects"),
    ("points_per_object", (5, 2), "scene.points_per_object"),
    ("object_size", (0.0, 0.2), "scene.object_size"),
    ("target_pool", 3, "scene.target_pool"),
])
def test_bad_settings_are_named(key, value, match):
    with pytest.raises(ValueError, match=match):
        make_scene_set(small_cfg(**{key: value}), 2, 0, 16)

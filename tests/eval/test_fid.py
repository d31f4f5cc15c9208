"""FID / KID math against closed forms, the preprocessing contract, and the reference cache."""
import os

import numpy as np
import pytest
import torch

from ditlab.eval import reference as fidmod
from ditlab.eval import (
    FeatureStats,
    dataset_fingerprint,
    extract_features,
    frechet_distance,
    kid,
    load_inception,
    load_stats,
    load_stats_and_features,
    preprocess,
    reference_cache_key,
    reference_stats,
    save_stats,
)

from .helpers import StandIn, random_images, save_scripted, write_folder, write_zip


def random_spd(d, seed, rank=None, scale=1.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, rank or d))
    s = a @ a.T / (rank or d) * scale
    return s if rank is not None else s + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------------------------
# Fréchet distance


def test_identical_stats_give_zero():
    s = FeatureStats(np.arange(64.0), random_spd(64, 0), 1000)
    assert abs(frechet_distance(s, s)) < 1e-6


def test_mean_shift_only_gives_squared_distance():
    sigma = random_spd(32, 1)
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    d = frechet_distance(FeatureStats(mu1, sigma), FeatureStats(mu2, sigma))
    assert d == pytest.approx(float(np.sum((mu1 - mu2) ** 2)), rel=1e-9, abs=1e-9)


def test_commuting_diagonal_covariances():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.0, 4.0, 50), rng.uniform(0.0, 4.0, 50)
    a[:5] = 0.0  # singular on some axes
    mu = rng.normal(size=50)
    d = frechet_distance(FeatureStats(mu, np.diag(a)), FeatureStats(mu + 0.5, np.diag(b)))
    expected = 50 * 0.25 + float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    assert d == pytest.approx(expected, rel=1e-9)


def test_rank_deficient_covariances_stay_finite_and_non_negative():
    d = 256
    s1, s2 = random_spd(d, 4, rank=10), random_spd(d, 5, rank=3)
    mu = np.zeros(d)
    value = frechet_distance(FeatureStats(mu, s1), FeatureStats(mu, s2))
    assert np.isfinite(value) and value >= 0.0
    same = frechet_distance(FeatureStats(mu, s1), FeatureStats(mu, s1))
    assert np.isfinite(same) and 0.0 <= same < 1e-4
    # features with n < d (the usual small-sample case)
    f = np.random.default_rng(6).normal(size=(20, d))
    fs = FeatureStats.from_features(f)
    assert 0.0 <= frechet_distance(fs, fs) < 1e-4
    assert np.isfinite(frechet_distance(fs, FeatureStats(mu, s1)))


def test_matches_scipy_sqrtm_on_random_spd():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(7)
    s1, s2 = random_spd(40, 8), random_spd(40, 9, scale=3.0)
    mu1, mu2 = rng.normal(size=40), rng.normal(size=40)
    covmean = linalg.sqrtm(s1 @ s2)
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)
    assert frechet_distance(FeatureStats(mu1, s1), FeatureStats(mu2, s2)) == pytest.approx(expected, rel=1e-8)


def test_matches_general_eigenvalues_of_the_product():
    """Without scipy: tr(sqrtm(S1 S2)) = sum of sqrt of the (real, >= 0) eigenvalues of S1 S2."""
    rng = np.random.default_rng(14)
    s1, s2 = random_spd(60, 15), random_spd(60, 16, scale=0.5)
    mu1, mu2 = rng.normal(size=60), rng.normal(size=60)
    tr_covmean = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).sum().real
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
    assert frechet_distance(FeatureStats(mu1, s1), FeatureStats(mu2, s2)) == pytest.approx(expected, rel=1e-8)


def test_feature_stats_match_numpy():
    f = np.random.default_rng(10).normal(size=(300, 16)) * 3 + 1
    s = FeatureStats.from_features(f)
    assert s.n == 300 and s.mu.dtype == np.float64 and s.sigma.dtype == np.float64
    np.testing.assert_allclose(s.mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.sigma, np.cov(f, rowvar=False), rtol=1e-10, atol=1e-12)
    s32 = FeatureStats.from_features(torch.from_numpy(f.astype(np.float32)))
    assert s32.sigma.dtype == np.float64
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats.from_features(f[:1])


def test_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(FeatureStats(np.zeros(3), np.eye(3)), FeatureStats(np.zeros(4), np.eye(4)))


# ---------------------------------------------------------------------------------------------
# KID


def _mmd2_unbiased_loop(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_equals_unbiased_mmd_on_the_full_set():
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.3, 1.0, size=(12, 5))
    mean, std = kid(x, y, num_subsets=3, subset_size=100)  # capped at 12: every subset is the full set
    assert mean == pytest.approx(_mmd2_unbiased_loop(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_same_distribution_small_shifted_positive():
    rng = np.random.default_rng(12)
    d = 64
    a, b = rng.normal(size=(600, d)), rng.normal(size=(600, d))
    shifted = rng.normal(0.5, 1.0, size=(600, d))
    same_mean, same_std = kid(a, b, num_subsets=20, subset_size=200)
    diff_mean, diff_std = kid(a, shifted, num_subsets=20, subset_size=200)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert diff_mean > 0.1 and diff_mean > 20 * abs(same_mean) and diff_mean > 5 * diff_std
    assert kid(a, b, num_subsets=5, subset_size=50, seed=3) == kid(a, b, num_subsets=5, subset_size=50, seed=3)


# ---------------------------------------------------------------------------------------------
# Preprocessing and features


class Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inputs = []
        self.inner = StandIn()

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.inner(x)


def test_network_input_shape_range_and_dtype():
    imgs = random_images(6)
    imgs[0] = 0
    imgs[1] = 255
    rec = Recorder()
    feats = extract_features(imgs, rec, "cpu", batch_size=4, progress=False)
    assert feats.shape == (6, 2048) and feats.dtype == np.float64
    x = torch.cat(rec.inputs)
    assert [t.shape[0] for t in rec.inputs] == [4, 2]
    assert x.shape == (6, 3, 299, 299) and x.dtype == torch.float32
    # The TF range [-1, 0.9921875] holds exactly by construction (preprocess clamps to [0, 255] before
    # (x - 128) / 128), whatever path the bilinear kernel takes.
    assert x.min().item() >= -1.0 and x.max().item() <= 0.9921875
    # All-black: every bilinear weight multiplies 0, so -1 exactly on every kernel path.
    assert torch.all(x[0] == -1.0)
    # All-white: the float32 sum of the bilinear weights can miss 1 by an ulp or two, and which pixels
    # miss depends on the kernel path the thread count picks (OMP_NUM_THREADS=1 takes another one):
    # 2 ulp of 255 is 3.1e-5, i.e. 2.4e-7 after the mapping, so a tolerance of 1e-6.
    torch.testing.assert_close(x[1], torch.full_like(x[1], 0.9921875), rtol=0, atol=1e-6)


def test_preprocess_is_tf_range_and_bilinear_resize():
    imgs = torch.from_numpy(random_images(2, size=299)).permute(0, 3, 1, 2).contiguous()
    out = preprocess(imgs)  # already 299: no resize, exact (x - 128) / 128
    assert torch.equal(out, (imgs.float() - 128) / 128)
    small = torch.from_numpy(random_images(2)).permute(0, 3, 1, 2).contiguous()
    ref = torch.nn.functional.interpolate(small.float(), size=(299, 299), mode="bilinear", align_corners=False)
    # Not exact: preprocess clamps the bilinear result, which can pass 255 by an ulp or two (which pixels
    # depends on the kernel path): 1e-6 covers that (2 ulp of 255 is 3.1e-5, / 128 after the mapping).
    torch.testing.assert_close(preprocess(small), (ref - 128) / 128, rtol=0, atol=1e-6)


def test_nhwc_numpy_and_nchw_torch_give_identical_features(standin_path):
    net = load_inception(standin_path, "cpu")
    imgs = random_images(7)
    f_np = extract_features(imgs, net, "cpu", batch_size=3, progress=False)
    f_t = extract_features(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), net, "cpu", batch_size=3,
                           progress=False)
    assert np.array_equal(f_np, f_t)
    # an iterable of mixed batches (same batch boundaries: BLAS results may depend on the batch size)
    batches = [imgs[:3], torch.from_numpy(imgs[3:]).permute(0, 3, 1, 2)]
    f_it = extract_features(iter(batches), net, "cpu", batch_size=3, progress=False)
    assert np.array_equal(f_np, f_it)
    f_odd = extract_features(iter([imgs[:2], imgs[2:]]), net, "cpu", batch_size=3, progress=False)
    np.testing.assert_allclose(f_odd, f_np, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_clear_errors(standin_path):
    net = load_inception(standin_path, "cpu")
    with pytest.raises(ValueError, match="uint8"):
        extract_features(random_images(2).astype(np.float32), net, "cpu", progress=False)
    with pytest.raises(ValueError, match="NHWC"):
        extract_features(random_images(2)[..., :1], net, "cpu", progress=False)
    with pytest.raises(ValueError, match="NCHW"):
        extract_features(torch.from_numpy(random_images(2)), net, "cpu", progress=False)
    with pytest.raises(ValueError, match="empty"):
        extract_features(iter([]), net, "cpu", progress=False)


# ---------------------------------------------------------------------------------------------
# Statistics files and the reference cache


def test_save_and_load_stats(tmp_path):
    f = np.random.default_rng(13).normal(size=(30, 8))
    s = FeatureStats.from_features(f)
    path = save_stats(tmp_path / "s.npz", s, f, meta={"dataset": "x"})
    back, feats, meta = load_stats_and_features(path)
    assert back.n == 30 and np.array_equal(back.mu, s.mu) and np.array_equal(back.sigma, s.sigma)
    assert feats.dtype == np.float32 and feats.shape == (30, 8) and meta == {"dataset": "x"}
    # the common layout: only mu and sigma
    np.savez(tmp_path / "common.npz", mu=s.mu, sigma=s.sigma)
    common = load_stats(tmp_path / "common.npz")
    assert common.n is None and np.array_equal(common.sigma, s.sigma)
    np.savez(tmp_path / "bad.npz", mean=s.mu)
    with pytest.raises(ValueError, match="'mu'"):
        load_stats(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        load_stats(tmp_path / "missing.npz")


class CountingNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.inner = StandIn()

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_reference_cache_hit_does_not_run_the_network(tmp_path, standin_path):
    data = write_zip(tmp_path / "ref.zip", random_images(10))
    cache = tmp_path / "cache"
    net = CountingNet()
    first = fidmod.compute_reference(str(data), standin_path, "cpu", cache, batch_size=4, progress=False, net=net)
    assert not first.hit and net.calls == 3 and first.stats.n == 10
    assert first.features.shape == (10, 2048) and first.features.dtype == np.float32
    assert first.cache_file.is_file() and first.cache_file.parent == cache
    second = fidmod.compute_reference(str(data), standin_path, "cpu", cache, batch_size=4, progress=False, net=net)
    assert second.hit and net.calls == 3
    assert np.array_equal(second.stats.sigma, first.stats.sigma)
    s = reference_stats(str(data), standin_path, "cpu", cache_dir=cache, progress=False, net=net)
    assert net.calls == 3 and s.n == 10


def test_reference_stats_loads_the_network_from_its_path(tmp_path, standin_path, monkeypatch):
    data = tmp_path / "ref.npz"
    np.savez(data, images=random_images(5))
    calls = []
    real = fidmod.load_inception
    monkeypatch.setattr(fidmod, "load_inception", lambda p, d: calls.append(p) or real(p, d))
    s1 = reference_stats(str(data), standin_path, "cpu", progress=False)  # default cache under XDG_CACHE_HOME
    s2 = reference_stats(str(data), standin_path, "cpu", progress=False)
    assert calls == [standin_path] and s1.n == s2.n == 5
    assert list((tmp_path / "xdg-cache" / "ditlab" / "fid" / "refs").glob("ref-*.npz"))


def test_changed_dataset_changes_the_key(tmp_path, standin_path):
    imgs = random_images(6)
    data = write_zip(tmp_path / "ref.zip", imgs)
    key1 = reference_cache_key(str(data), standin_path)
    assert reference_cache_key(str(data), standin_path) == key1
    imgs[3, 0, 0] ^= 1
    write_zip(data, imgs)
    key2 = reference_cache_key(str(data), standin_path)
    assert key2 != key1

    cache, net = tmp_path / "cache", CountingNet()
    fidmod.compute_reference(str(data), standin_path, "cpu", cache, progress=False, net=net)
    imgs[4, 1, 1] ^= 1
    write_zip(data, imgs)
    again = fidmod.compute_reference(str(data), standin_path, "cpu", cache, progress=False, net=net)
    assert not again.hit and net.calls == 2

    other_net = tmp_path / "other.pt"
    save_scripted(torch.nn.Identity(), other_net)
    assert reference_cache_key(str(data), other_net) != reference_cache_key(str(data), standin_path)


def test_folder_fingerprint_follows_names_sizes_and_mtimes(tmp_path):
    folder = write_folder(tmp_path / "imgs", random_images(3))
    fp = dataset_fingerprint(str(folder))
    assert dataset_fingerprint(str(folder)) == fp
    f = folder / "0001.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    fp2 = dataset_fingerprint(str(folder))
    assert fp2 != fp
    (folder / "0001.png").rename(folder / "0009.png")
    assert dataset_fingerprint(str(folder)) not in (fp, fp2)
    assert dataset_fingerprint("torchvision:CIFAR10") != dataset_fingerprint("torchvision:CIFAR10:test")
    with pytest.raises(FileNotFoundError, match="nope"):
        dataset_fingerprint(str(tmp_path / "nope"))


def test_features_are_not_stored_for_large_sets(tmp_path, standin_path, monkeypatch):
    monkeypatch.setattr(fidmod, "FEATURES_MAX_N", 3)
    data = tmp_path / "ref.npz"
    np.savez(data, images=random_images(5))
    res = fidmod.compute_reference(str(data), standin_path, "cpu", tmp_path / "c", progress=False)
    assert res.features is None
    _, feats, _ = load_stats_and_features(res.cache_file)
    assert feats is None

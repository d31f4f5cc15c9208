"""imageio: pixel conversion, grid geometry and placement, atomic PNG and NPZ writes."""
import numpy as np
import pytest
import torch
from PIL import Image

from ditlab import imageio
from ditlab.imageio import save_image_grid, save_npz_images, to_uint8


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0, -3.0, 0.5, float("nan")])
    out = to_uint8(x)
    assert out.dtype == torch.uint8
    assert out.tolist() == [0, 128, 255, 255, 0, 191, 0]


def constant_batch(n=10, h=8, w=8):
    """Image i is filled with value 10 + 20 * i, so its grid position can be checked."""
    vals = torch.arange(n, dtype=torch.uint8) * 20 + 10
    return vals.view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()


def test_grid_shape_and_placement(tmp_path):
    imgs = constant_batch()
    path = save_image_grid(imgs, tmp_path / "grid.png", nrow=4)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (3 * 10 + 2, 4 * 10 + 2, 3)  # 3 rows x 4 columns, 2-px padding
    for i in range(10):
        r, c = divmod(i, 4)
        y, x = 2 + r * 10, 2 + c * 10
        assert (grid[y:y + 8, x:x + 8] == 10 + 20 * i).all()
    assert (grid[:2] == 0).all() and (grid[:, 10:12] == 0).all()  # padding
    assert (grid[22:30, 22:] == 0).all()  # empty cells of the last row


def test_numpy_nhwc_matches_torch_nchw_and_default_nrow(tmp_path):
    imgs = constant_batch()
    a = save_image_grid(imgs, tmp_path / "a.png")
    b = save_image_grid(imgs.permute(0, 2, 3, 1).numpy(), tmp_path / "b.png")
    ga, gb = np.asarray(Image.open(a)), np.asarray(Image.open(b))
    assert np.array_equal(ga, gb)
    assert ga.shape[1] == 4 * 10 + 2  # ceil(sqrt(10)) = 4 per row


def test_grid_rejects_float(tmp_path):
    with pytest.raises(TypeError, match="to_uint8"):
        save_image_grid(torch.zeros(2, 3, 4, 4), tmp_path / "x.png")


def test_grid_atomic_replace(tmp_path, monkeypatch):
    path = tmp_path / "grid.png"
    save_image_grid(constant_batch(4), path)
    save_image_grid(constant_batch(2), path)  # overwrite
    before = path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]

    def boom(self, fp, *a, **k):
        open(fp, "wb").write(b"half a png")
        raise OSError("disk full")
    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError):
        save_image_grid(constant_batch(4), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_npz_round_trip_and_suffix(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    path = save_npz_images(tmp_path / "samples", imgs, labels=[0, 1, 2, 3, 4])
    assert path == tmp_path / "samples.npz"
    assert [p.name for p in tmp_path.iterdir()] == ["samples.npz"]
    with np.load(path) as data:
        assert np.array_equal(data["arr_0"], imgs)
        assert data["arr_1"].tolist() == [0, 1, 2, 3, 4]
    p2 = save_npz_images(tmp_path / "t.npz", torch.from_numpy(imgs))
    with np.load(p2) as data:
        assert np.array_equal(data["arr_0"], imgs) and "arr_1" not in data
    with pytest.raises(ValueError, match="labels"):
        save_npz_images(tmp_path / "bad.npz", imgs, labels=[1, 2])


def test_npz_failure_leaves_no_temp(tmp_path, monkeypatch):
    imgs = np.zeros((2, 4, 4, 3), np.uint8)
    path = save_npz_images(tmp_path / "s.npz", imgs)

    def boom(f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(imageio.np, "savez", boom)
    with pytest.raises(OSError):
        save_npz_images(path, np.ones((2, 4, 4, 3), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]
    with np.load(path) as data:
        assert not data["arr_0"].any()

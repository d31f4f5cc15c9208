"""load_image_data over folders, zips, npz, the embedded sample and torchvision; error cases."""
from __future__ import annotations

import io
import sys
import types
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.data import DataError, ImageData, embedded_sample_path, load_image_data


def png_bytes(color, size=(8, 8), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# Files of a small labeled set: class folder -> {relative file: red value}. Class folders are
# given out of order and files nested, to check sorting.
LAYOUT = {
    "zebra": {"b.png": 30, "a.PNG": 20, "sub/deeper/c.png": 40},
    "ant": {"2.png": 11, "1.png": 10},
    "moth": {"x.bmp": 50},
}
# Expected order: classes sorted, files sorted by relative path.
EXPECTED = [(0, 10), (0, 11), (1, 50), (2, 20), (2, 30), (2, 40)]


def encode_as(name: str, red: int) -> bytes:
    fmt = "BMP" if name.endswith(".bmp") else "PNG"
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (red, 0, 0)).save(buf, format=fmt)
    return buf.getvalue()


def make_folder(root: Path) -> Path:
    for cls, files in LAYOUT.items():
        for rel, red in files.items():
            write(root / cls / rel, encode_as(rel, red))
    write(root / ".hidden" / "h.png", png_bytes((1, 1, 1)))  # ignored
    write(root / "zebra" / ".DS_Store", b"junk")  # ignored
    write(root / "ant" / "notes.txt", b"not an image, ignored")
    return root


def make_zip(path: Path, prefix: str = "", extra: dict | None = None,
             compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for cls, files in LAYOUT.items():
            zf.writestr(f"{prefix}{cls}/", b"")
            for rel, red in files.items():
                zf.writestr(f"{prefix}{cls}/{rel}", encode_as(rel, red))
        zf.writestr("__MACOSX/" + prefix + "ant/._1.png", b"resource fork")
        zf.writestr(prefix + "ant/.DS_Store", b"junk")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def check_layout(data: ImageData):
    assert isinstance(data, ImageData)
    assert data.class_names == ["ant", "moth", "zebra"]
    assert data.num_classes == 3
    assert data.images.dtype == torch.uint8 and data.images.is_contiguous()
    assert data.images.shape == (6, 3, 8, 8)
    assert data.labels.dtype == torch.int64
    got = [(int(l), int(img[0, 0, 0])) for l, img in zip(data.labels, data.images)]
    assert got == EXPECTED
    assert (data.images[:, 1:] == 0).all()
    assert data.skipped == []


def test_folder_roundtrip(tmp_path):
    root = make_folder(tmp_path / "ds")
    data = load_image_data(str(root), progress=False)
    check_layout(data)
    assert str(root) in data.source


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_zip_roundtrip(tmp_path, compression):
    path = make_zip(tmp_path / "ds.zip", extra={"README.txt": b"loose file"}, compression=compression)
    check_layout(load_image_data(str(path), progress=False))


def test_zip_corrupt_stored_member_detected(tmp_path):
    path = make_zip(tmp_path / "ds.zip")
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("moth/x.bmp")
        member = zf.read(info)
    at = bytes(raw).index(member) + len(member) - 5
    raw[at] ^= 0xFF  # flip pixel bytes: the image still decodes, only the CRC can tell
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="CRC") as info:
        load_image_data(str(path), progress=False)
    assert f"{path}:moth/x.bmp" in str(info.value)


def test_zip_with_wrapping_folder(tmp_path):
    data = load_image_data(str(make_zip(tmp_path / "ds.zip", prefix="train/")), progress=False)
    check_layout(data)


def test_unlabeled_flat_folder(tmp_path):
    for i, name in enumerate(["c.png", "a.png", "b.JPG"]):
        if name.endswith("JPG"):
            write(tmp_path / name, jpeg_bytes((8, 8)))
        else:
            write(tmp_path / name, png_bytes((100 + i, 0, 0)))
    data = load_image_data(str(tmp_path), progress=False)
    assert data.class_names == [] and data.num_classes == 0
    assert data.images.shape == (3, 3, 8, 8)
    assert data.labels.tolist() == [0, 0, 0]
    assert data.images[0, 0, 0, 0] == 101 and data.images[2, 0, 0, 0] == 100  # a, b, c


def test_unlabeled_zip_in_one_folder(tmp_path):
    path = tmp_path / "flat.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            zf.writestr(f"pics/{i}.png", png_bytes((i, 0, 0)))
    data = load_image_data(str(path), progress=False)
    assert data.class_names == [] and len(data) == 3


def test_mixed_root_files_and_class_folders(tmp_path):
    write(tmp_path / "loose.png", png_bytes((0, 0, 0)))
    write(tmp_path / "cat" / "1.png", png_bytes((0, 0, 0)))
    with pytest.raises(DataError, match="loose.png"):
        load_image_data(str(tmp_path), progress=False)


# ---- npz -------------------------------------------------------------------------------------


def rgb_batch(n=4, h=8, w=10):
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_npz_nhwc_with_labels_and_names(tmp_path):
    x = rgb_batch()
    path = tmp_path / "d.npz"
    np.savez(path, images=x, labels=np.array([0, 2, 1, 2]), class_names=np.array(["a", "b", "c"]))
    data = load_image_data(str(path), progress=False)
    assert data.images.shape == (4, 3, 8, 10) and data.images.is_contiguous()
    np.testing.assert_array_equal(data.images.numpy(), x.transpose(0, 3, 1, 2))
    assert data.labels.tolist() == [0, 2, 1, 2] and data.labels.dtype == torch.int64
    assert data.class_names == ["a", "b", "c"]


def test_npz_nchw_and_labels_without_names(tmp_path):
    x = rgb_batch().transpose(0, 3, 1, 2).copy()
    path = tmp_path / "d.npz"
    np.savez(path, images=x, labels=np.array([1, 0, 1, 1], dtype=np.int32))
    data = load_image_data(str(path), progress=False)
    np.testing.assert_array_equal(data.images.numpy(), x)
    assert data.class_names == ["0", "1"]


@pytest.mark.parametrize("shape", [(3, 9, 9, 1), (3, 1, 9, 9), (3, 9, 9)])
def test_npz_grayscale_replicated(tmp_path, shape):
    x = np.arange(np.prod(shape), dtype=np.int64).reshape(shape).astype(np.uint8)
    path = tmp_path / "g.npz"
    np.savez(path, images=x)
    data = load_image_data(str(path), progress=False)
    assert data.images.shape == (3, 3, 9, 9)
    grey = x.reshape(3, 9, 9)
    for c in range(3):
        np.testing.assert_array_equal(data.images[:, c].numpy(), grey)
    assert data.class_names == [] and data.labels.tolist() == [0, 0, 0]


def test_npz_single_unnamed_uint8_array(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, pics=rgb_batch(), meta=np.zeros(3))
    assert load_image_data(str(path), progress=False).images.shape == (4, 3, 8, 10)


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-1.0, 1.0)])
def test_npz_float_rejected_with_conversion_hint(tmp_path, lo, hi):
    path = tmp_path / "f.npz"
    np.savez(path, images=np.linspace(lo, hi, 4 * 8 * 8 * 3, dtype=np.float32).reshape(4, 8, 8, 3))
    with pytest.raises(DataError, match="uint8") as info:
        load_image_data(str(path), progress=False)
    msg = str(info.value)
    assert "float32" in msg and "astype(np.uint8)" in msg and "127.5" in msg and str(path) in msg


def test_npz_missing_key_lists_keys(tmp_path):
    path = tmp_path / "k.npz"
    np.savez(path, foo=np.zeros((2, 3)), bar=np.zeros((4, 8, 8, 3), dtype=np.float32))
    with pytest.raises(DataError, match="images") as info:
        load_image_data(str(path), progress=False)
    assert "'foo'" in str(info.value) and "'bar'" in str(info.value)


def test_npz_bad_labels_and_resize(tmp_path):
    path = tmp_path / "l.npz"
    np.savez(path, images=rgb_batch(), labels=np.array([0, 1]))
    with pytest.raises(DataError, match="labels"):
        load_image_data(str(path), progress=False)
    np.savez(path, images=rgb_batch(h=20, w=30))
    data = load_image_data(str(path), image_size=12, progress=False)
    assert data.images.shape == (4, 3, 12, 12) and data.images.is_contiguous()


def test_npz_tiny_images_rejected(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, images=rgb_batch(h=4, w=4))
    with pytest.raises(DataError, match="t.npz"):
        load_image_data(str(path), progress=False)


# ---- embedded sample -------------------------------------------------------------------------


def test_embedded_sample():
    path = embedded_sample_path()
    assert path.is_file() and path.stat().st_size < 8 * 2**20
    data = load_image_data("", progress=False)
    assert data.images.shape == (5000, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.images.is_contiguous()
    assert data.num_classes == 10 and data.class_names[0] == "airplane"
    assert Counter(data.labels.tolist()) == {k: 500 for k in range(10)}
    assert data.labels.tolist() == sorted(data.labels.tolist())
    assert "CIFAR-10" in data.source
    assert 60 < data.images.float().mean() < 200  # real photos, not blank


# ---- errors ----------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as info:
        load_image_data(str(missing), progress=False)
    assert str(missing) in str(info.value)


def test_empty_folder_and_zip(tmp_path):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty" / "readme.txt", b"no images")
    with pytest.raises(DataError, match=r"no images.*\.png.*\.jpeg") as info:
        load_image_data(str(tmp_path / "empty"), progress=False)
    assert "empty" in str(info.value)
    z = tmp_path / "empty.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a/readme.txt", b"x")
        zf.writestr("b/", b"")
    with pytest.raises(DataError, match=r"no images.*\.webp") as info:
        load_image_data(str(z), progress=False)
    assert str(z) in str(info.value)


def test_empty_class_folder_named(tmp_path):
    write(tmp_path / "cat" / "1.png", png_bytes((0, 0, 0)))
    (tmp_path / "dog").mkdir()
    with pytest.raises(DataError, match="'dog'"):
        load_image_data(str(tmp_path), progress=False)
    z = tmp_path / "ds.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("cat/1.png", png_bytes((0, 0, 0)))
        zf.writestr("dog/", b"")
    with pytest.raises(DataError, match="'dog'"):
        load_image_data(str(z), progress=False)


BAD_FILES = {
    "truncated": lambda: jpeg_bytes()[:400],
    "empty": lambda: b"",
    "text": lambda: b"this is text, not a PNG\n" * 10,
}


@pytest.mark.parametrize("kind,reason", [
    ("truncated", "truncated"), ("empty", "0 bytes"), ("text", "not a recognised image"),
])
def test_bad_file_in_folder_named(tmp_path, kind, reason):
    write(tmp_path / "cat" / "good.jpg", jpeg_bytes())
    bad = write(tmp_path / "cat" / "bad.png", BAD_FILES[kind]())
    with pytest.raises(DataError, match=reason) as info:
        load_image_data(str(tmp_path), progress=False)
    assert str(bad) in str(info.value)
    assert "on_bad_image=skip" in str(info.value)


def test_bad_file_in_zip_named_with_member(tmp_path):
    z = tmp_path / "arch.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("top/cat/good.jpg", jpeg_bytes())
        zf.writestr("top/cat/broken.png", b"nope")
        zf.writestr("top/dog/good.jpg", jpeg_bytes())
    with pytest.raises(DataError) as info:
        load_image_data(str(z), progress=False)
    assert f"{z}:top/cat/broken.png" in str(info.value)


def test_skip_mode_counts_and_warns_once(tmp_path, capsys):
    for i in range(5):
        write(tmp_path / "cat" / f"{i}.jpg", jpeg_bytes())
    write(tmp_path / "dog" / "ok.jpg", jpeg_bytes())
    bad = [
        write(tmp_path / "cat" / "t.jpg", jpeg_bytes()[:300]),
        write(tmp_path / "dog" / "zero.png", b""),
        write(tmp_path / "dog" / "text.png", b"hello"),
    ]
    data = load_image_data(str(tmp_path), on_bad_image="skip", progress=False)
    assert len(data) == 6 and data.images.shape == (6, 3, 32, 32) and data.images.is_contiguous()
    assert data.labels.tolist() == [0] * 5 + [1]
    assert sorted(data.skipped) == sorted(str(p) for p in bad)
    err = capsys.readouterr().err
    warning_lines = [line for line in err.splitlines() if "skipped" in line]
    assert len(warning_lines) == 1 and "3 of 9" in warning_lines[0]


def test_skip_mode_with_nothing_left_errors(tmp_path):
    write(tmp_path / "a.png", b"")
    write(tmp_path / "b.png", b"junk")
    with pytest.raises(DataError, match="none of the 2"):
        load_image_data(str(tmp_path), on_bad_image="skip", progress=False)


def test_non_uniform_sizes_need_image_size(tmp_path):
    write(tmp_path / "a.png", png_bytes((0, 0, 0), (16, 16)))
    write(tmp_path / "b.png", png_bytes((0, 0, 0), (16, 16)))
    write(tmp_path / "c.png", png_bytes((0, 0, 0), (20, 16)))
    write(tmp_path / "d.png", png_bytes((0, 0, 0), (24, 24)))
    with pytest.raises(DataError, match="image_size") as info:
        load_image_data(str(tmp_path), progress=False)
    assert str(tmp_path / "c.png") in str(info.value)
    data = load_image_data(str(tmp_path), image_size=12, progress=False)
    assert data.images.shape == (4, 3, 12, 12)


def test_tiny_and_extreme_aspect_in_folder(tmp_path):
    write(tmp_path / "ok.png", png_bytes((0, 0, 0), (16, 16)))
    tiny = write(tmp_path / "tiny.png", png_bytes((0, 0, 0), (4, 16)))
    with pytest.raises(DataError, match="at least 8x8") as info:
        load_image_data(str(tmp_path), image_size=16, on_bad_image="skip", progress=False)
    assert str(tiny) in str(info.value)
    tiny.unlink()
    banner = write(tmp_path / "banner.png", png_bytes((0, 0, 0), (100, 20)))
    with pytest.raises(DataError, match="aspect ratio") as info:
        load_image_data(str(tmp_path), image_size=16, progress=False)
    assert str(banner) in str(info.value)


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="on_bad_image"):
        load_image_data("", on_bad_image="ignore")
    with pytest.raises(DataError, match="image_size"):
        load_image_data("", image_size=4)
    f = write(tmp_path / "x.tar", b"")
    with pytest.raises(DataError, match="not a .zip or .npz"):
        load_image_data(str(f), progress=False)


# ---- torchvision -----------------------------------------------------------------------------


def test_torchvision_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(DataError, match="pip install torchvision"):
        load_image_data("torchvision:CIFAR10", root="/nonexistent-root", progress=False)


def fake_torchvision(monkeypatch, tmp_path):
    class CIFAR10:  # array fast path, like torchvision's
        classes = ["plane", "car"]

        def __init__(self, root, train=True, transform=None, download=False):
            assert download and Path(root).is_dir()
            n = 6 if train else 2
            self.data = np.full((n, 32, 32, 3), 7 if train else 9, dtype=np.uint8)
            self.targets = [i % 2 for i in range(n)]

        def __len__(self):
            return len(self.data)

    class MNIST:  # torch tensor (N, H, W)
        classes = [str(i) for i in range(10)]

        def __init__(self, root, train=True, download=False):
            self.data = torch.full((5, 28, 28), 200, dtype=torch.uint8)
            self.targets = torch.tensor([3, 1, 4, 1, 5])

        def __len__(self):
            return 5

    class Folderish:  # generic path: PIL images through __getitem__
        def __init__(self, root, split="train", download=False):
            self.split = split

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return Image.new("L", (40, 20), 60 * i), i

    datasets = types.SimpleNamespace(CIFAR10=CIFAR10, MNIST=MNIST, Folderish=Folderish)
    tv = types.ModuleType("torchvision")
    tv.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", tv)


def test_torchvision_conversion_with_fake_module(monkeypatch, tmp_path):
    fake_torchvision(monkeypatch, tmp_path)
    root = str(tmp_path / "cache")
    data = load_image_data("torchvision:CIFAR10", root=root, progress=False)
    assert data.images.shape == (6, 3, 32, 32) and (data.images == 7).all()
    assert data.class_names == ["plane", "car"] and data.labels.tolist() == [0, 1] * 3
    assert "CIFAR10" in data.source
    test = load_image_data("torchvision:cifar10:test", root=root, progress=False)
    assert len(test) == 2 and (test.images == 9).all()
    mnist = load_image_data("torchvision:MNIST", root=root, image_size=16, progress=False)
    assert mnist.images.shape == (5, 3, 16, 16) and mnist.num_classes == 10
    assert mnist.labels.tolist() == [3, 1, 4, 1, 5]
    generic = load_image_data("torchvision:Folderish", root=root, image_size=16, progress=False)
    assert generic.images.shape == (3, 3, 16, 16) and generic.labels.tolist() == [0, 1, 2]
    assert generic.images[2].float().mean() == 120
    with pytest.raises(DataError, match="no data set 'Nope'"):
        load_image_data("torchvision:Nope", root=root, progress=False)

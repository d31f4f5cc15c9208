"""Issue 7, items 22-25: bad image files, unusual modes, tiny or extreme images and missing data,
through the loader (load_image_data) and the training set-up, not only through decode_image.

22. Truncated JPEG, 0-byte file, text named .png: an error naming the file (a zip member as
    archive:member); data.on_bad_image=skip (opt-in, also from the config) leaves them out, counts
    them and warns once.
23. Modes L, LA, P with transparency, RGBA, CMYK, I;16 load as (N, 3, H, W) uint8 with the values
    of the documented conversion; mode F is an explicit error naming the file, even under skip.
24. 1x1, tiny and extreme-aspect images: an error naming the file (policy errors are never
    skipped); the limits are MIN_SIDE and MAX_ASPECT of ditlab.data.images.
25. Missing path, empty folder, empty class folder: an error with the path and the accepted
    extensions, raised before the Trainer sets up a device or a model.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.config import load_config
from ditlab.data import IMAGE_EXTENSIONS, MAX_ASPECT, MIN_SIDE, DataError, load_image_data
from ditlab.tasks.image.data import load_image_train_data
from ditlab.train import trainer as trainer_mod


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def good_jpeg(size=(16, 16)) -> bytes:
    return encode(Image.effect_noise(size, 60).convert("RGB"), "JPEG", quality=95)


BAD_FILES = {  # name -> (bytes, phrase of the reason)
    "cut.jpg": (lambda: good_jpeg((64, 64))[:300], "truncated"),
    "zero.png": (lambda: b"", "0 bytes"),
    "text.png": (lambda: b"I am a text file with a .png name\n" * 4, "not a recognised image"),
}


# ---- item 22: unreadable files ------------------------------------------------------------------
@pytest.mark.parametrize("bad", BAD_FILES)
def test_unreadable_zip_member_is_named_with_archive_and_member(tmp_path, bad):
    make, reason = BAD_FILES[bad]
    z = tmp_path / "set.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("cat/ok.jpg", good_jpeg())
        zf.writestr(f"cat/{bad}", make())
    with pytest.raises(DataError, match=reason) as info:
        load_image_data(str(z), progress=False)
    assert f"{z}:cat/{bad}" in str(info.value) and "on_bad_image=skip" in str(info.value)


def test_skip_in_a_zip_counts_and_warns_once(tmp_path, capsys):
    z = tmp_path / "set.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(3):
            zf.writestr(f"cat/{i}.jpg", good_jpeg())
        for name, (make, _) in BAD_FILES.items():
            zf.writestr(f"cat/{name}", make())
    data = load_image_data(str(z), on_bad_image="skip", progress=False)
    assert data.images.shape == (3, 3, 16, 16)
    assert sorted(data.skipped) == sorted(f"{z}:cat/{name}" for name in BAD_FILES)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert len(warnings) == 1 and "3 of 6" in warnings[0]


def image_cfg(path, *extra):
    return load_config(None, [f"data.path={path}", "model.num_classes=0", *extra])


def test_skip_is_opt_in_from_the_config(tmp_path):
    """data.on_bad_image reaches the loader of a training run; the default stops at the bad file."""
    for i in range(2):
        write(tmp_path / "set" / f"{i}.jpg", good_jpeg())
    bad = write(tmp_path / "set" / "zero.png", b"")
    with pytest.raises(DataError, match="0 bytes") as info:
        load_image_train_data(image_cfg(tmp_path / "set"), progress=False)
    assert str(bad) in str(info.value)
    train_data = load_image_train_data(image_cfg(tmp_path / "set", "data.on_bad_image=skip"), progress=False)
    assert train_data.num_examples == 2 and train_data.data.skipped == [str(bad)]


# ---- item 23: image modes -----------------------------------------------------------------------
def la_image() -> Image.Image:
    img = Image.new("LA", (16, 16))
    img.putdata([(0, 0)] * 128 + [(0, 255)] * 128)  # top half transparent black, bottom half opaque black
    return img


def palette_with_transparency() -> bytes:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.paste(1, (0, 8, 16, 16))  # bottom half: index 1 = red; index 0 is transparent
    return encode(img, transparency=0)


def rgba_image() -> Image.Image:
    arr = np.zeros((16, 16, 4), dtype=np.uint8)
    arr[8:] = (200, 10, 20, 255)  # bottom half opaque; top half fully transparent black
    return Image.fromarray(arr, "RGBA")


def grey16_image() -> Image.Image:
    return Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16))  # 16-bit grey, mid level


# file name -> (encoded bytes, expected RGB of the top half, expected RGB of the bottom half)
MODES = {
    "l.png": (lambda: encode(Image.new("L", (16, 16), 77)), (77, 77, 77), (77, 77, 77)),
    "la.png": (lambda: encode(la_image()), (255, 255, 255), (0, 0, 0)),
    "p.png": (palette_with_transparency, (255, 255, 255), (255, 0, 0)),
    "rgba.png": (lambda: encode(rgba_image()), (255, 255, 255), (200, 10, 20)),
    "cmyk.tif": (lambda: encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "TIFF"), (255, 0, 0), (255, 0, 0)),
    "grey16.png": (lambda: encode(grey16_image()), (128, 128, 128), (128, 128, 128)),
}


def test_every_mode_loads_as_n3hw_uint8_with_the_documented_values(tmp_path):
    for name, (make, _, _) in MODES.items():
        write(tmp_path / "set" / name, make())
    data = load_image_data(str(tmp_path / "set"), progress=False)
    assert data.images.dtype == torch.uint8 and tuple(data.images.shape) == (len(MODES), 3, 16, 16)
    for name, image in zip(data.names, data.images):
        _, top, bottom = MODES[name]
        assert image[:, :8].reshape(3, -1).T.unique(dim=0).tolist() == [list(top)], name
        assert image[:, 8:].reshape(3, -1).T.unique(dim=0).tolist() == [list(bottom)], name


@pytest.mark.parametrize("on_bad_image", ["error", "skip"])
def test_float_mode_is_an_explicit_error_naming_the_file(tmp_path, on_bad_image):
    write(tmp_path / "set" / "ok.png", encode(Image.new("RGB", (16, 16))))
    float_image = Image.fromarray(np.full((16, 16), 0.5, np.float32), "F")
    bad = write(tmp_path / "set" / "float.tif", encode(float_image, "TIFF"))
    with pytest.raises(DataError, match="mode F") as info:
        load_image_data(str(tmp_path / "set"), on_bad_image=on_bad_image, progress=False)
    assert str(bad) in str(info.value)


# ---- item 24: tiny and extreme-aspect images ----------------------------------------------------
@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"), ("BMP", "bmp")])
@pytest.mark.parametrize("image_size", [None, 16])
def test_one_pixel_image_is_an_error_naming_the_file(tmp_path, fmt, ext, image_size):
    write(tmp_path / "set" / f"ok.{ext}", encode(Image.new("RGB", (16, 16)), fmt))
    dot = write(tmp_path / "set" / f"dot.{ext}", encode(Image.new("RGB", (1, 1), (9, 9, 9)), fmt))
    # skip does not apply: a 1x1 image is readable, and dropping it silently would hide a data problem
    with pytest.raises(DataError, match=rf"1x1 pixels.*at least {MIN_SIDE}x{MIN_SIDE}") as info:
        load_image_data(str(tmp_path / "set"), image_size=image_size, on_bad_image="skip", progress=False)
    assert str(dot) in str(info.value)


@pytest.mark.parametrize("size,ok", [
    ((MIN_SIDE, MIN_SIDE), True), ((MIN_SIDE - 1, MIN_SIDE), False),
    ((int(MAX_ASPECT * 10), 10), True), ((int(MAX_ASPECT * 10) + 1, 10), False),
    ((10, int(MAX_ASPECT * 10) + 1), False),
])
def test_size_policy_limits_through_the_loader(tmp_path, size, ok):
    path = write(tmp_path / "set" / "img.png", encode(Image.new("RGB", size, (1, 2, 3))))
    if ok:  # and the documented resize: shorter side to image_size, centre square
        assert load_image_data(str(tmp_path / "set"), image_size=16, progress=False).images.shape == (1, 3, 16, 16)
        return
    with pytest.raises(DataError, match=r"at least|aspect ratio") as info:
        load_image_data(str(tmp_path / "set"), image_size=16, progress=False)
    assert str(path) in str(info.value) and f"{size[0]}x{size[1]}" in str(info.value)


def test_one_pixel_zip_member_and_npz_are_named(tmp_path):
    z = tmp_path / "set.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.png", encode(Image.new("RGB", (16, 16))))
        zf.writestr("dot.png", encode(Image.new("RGB", (1, 1))))
    with pytest.raises(DataError, match=rf"{z}:dot\.png is 1x1"):
        load_image_data(str(z), progress=False)
    npz = tmp_path / "dots.npz"
    np.savez(npz, images=np.zeros((4, 1, 1, 3), np.uint8))
    with pytest.raises(DataError, match=r"dots\.npz.*1x1"):
        load_image_data(str(npz), progress=False)
    banner = tmp_path / "banner.npz"
    np.savez(banner, images=np.zeros((4, 8, 40, 3), np.uint8))
    with pytest.raises(DataError, match=r"banner\.npz.*aspect ratio of 5\.0:1"):
        load_image_data(str(banner), image_size=8, progress=False)


# ---- item 25: missing or empty data, before any device or model set-up ---------------------------
def assert_path_and_extensions(err: DataError, path) -> None:
    msg = str(err)
    assert str(path) in msg, msg
    assert all(ext in msg for ext in IMAGE_EXTENSIONS), msg


@pytest.mark.parametrize("name", ["missing", "missing.zip", "missing.npz"])
def test_missing_path_names_it_and_the_accepted_extensions(tmp_path, name):
    with pytest.raises(DataError, match="does not exist") as info:
        load_image_data(str(tmp_path / name), progress=False)
    assert_path_and_extensions(info.value, tmp_path / name)


def test_folder_with_no_files_at_all(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found") as info:
        load_image_data(str(tmp_path / "empty"), progress=False)
    assert_path_and_extensions(info.value, tmp_path / "empty")


@pytest.mark.parametrize("content", [{}, {"notes.txt": b"x"}, {".hidden.png": None}, {"sub/readme.md": b"x"}],
                         ids=["empty", "text-only", "hidden-image-only", "nested-non-image"])
def test_class_folder_without_images_is_named(tmp_path, content):
    write(tmp_path / "set" / "cat" / "1.png", encode(Image.new("RGB", (16, 16))))
    (tmp_path / "set" / "dog").mkdir()
    for rel, data in content.items():
        write(tmp_path / "set" / "dog" / rel, data if data is not None else encode(Image.new("RGB", (16, 16))))
    with pytest.raises(DataError, match="class folder 'dog'") as info:
        load_image_data(str(tmp_path / "set"), progress=False)
    assert_path_and_extensions(info.value, tmp_path / "set")


def test_file_of_the_wrong_kind_lists_what_data_path_takes(tmp_path):
    f = write(tmp_path / "images.tar", b"not a zip")
    with pytest.raises(DataError, match="not a .zip or .npz") as info:
        load_image_data(str(f), progress=False)
    assert_path_and_extensions(info.value, f)


@pytest.mark.parametrize("layout", ["missing", "empty-class"])
def test_trainer_reports_bad_data_before_device_or_model_set_up(tmp_path, monkeypatch, layout):
    def touched(*args, **kwargs):
        raise AssertionError("a device or the model was set up before the data was checked")

    monkeypatch.setattr(torch.cuda, "is_available", touched)  # train.device=auto would ask first
    monkeypatch.setattr(trainer_mod, "build_model", touched)
    data = tmp_path / "set"
    if layout == "empty-class":
        write(data / "cat" / "1.png", encode(Image.new("RGB", (16, 16))))
        (data / "dog").mkdir()
    cfg = image_cfg(data, "train.device=auto", f"train.run_dir={tmp_path / 'run'}")
    with pytest.raises(DataError) as info:
        trainer_mod.Trainer(cfg, progress=False)
    assert_path_and_extensions(info.value, data)
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started

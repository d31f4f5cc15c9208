"""Decoding, mode conversion and the resize policy of ditlab.data.images."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ditlab.data import BadImageError, DataError, decode_image, to_rgb
from ditlab.data.images import fit_to_size, is_image_name


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def solid(mode: str, value, size=(16, 16)) -> Image.Image:
    return Image.new(mode, size, value)


def test_extensions_case_insensitive():
    for name in ["a.PNG", "b.JpEg", "c.webp", "d.TIFF", "e.ppm", "f.gif", "g.bmp", "h.tif", "i.jpg"]:
        assert is_image_name(name)
    assert not is_image_name("notes.txt") and not is_image_name("png")


def test_rgb_roundtrip_exact():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(arr)), "x.png")
    assert out.dtype == np.uint8 and out.shape == (12, 20, 3)
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("mode,value,expected", [("L", 77, 77), ("1", 1, 255), ("1", 0, 0)])
def test_grey_modes_replicated(mode, value, expected):
    out = decode_image(encode(solid(mode, value)), "g.png")
    assert out.shape == (16, 16, 3)
    assert (out == expected).all()


def test_la_composited_on_white():
    img = Image.new("LA", (16, 16))
    img.putdata([(0, 0)] * 128 + [(0, 255)] * 128)  # top half transparent black, bottom opaque
    out = decode_image(encode(img), "la.png")
    assert (out[:8] == 255).all()
    assert (out[8:] == 0).all()


def test_rgba_transparent_is_white_and_opaque_kept():
    arr = np.zeros((16, 16, 4), dtype=np.uint8)
    arr[:, :8] = (0, 0, 0, 0)  # fully transparent black -> white
    arr[:, 8:] = (200, 10, 20, 255)  # opaque
    out = decode_image(encode(Image.fromarray(arr, "RGBA")), "rgba.png")
    assert (out[:, :8] == 255).all()
    assert (out[:, 8:] == (200, 10, 20)).all()


def test_rgba_half_alpha_blends_with_white():
    img = solid("RGBA", (0, 0, 0, 128))
    out = decode_image(encode(img), "half.png")
    assert abs(int(out[0, 0, 0]) - 127) <= 1


def test_palette_with_transparency():
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.paste(1, (0, 8, 16, 16))  # bottom half: index 1 = red
    data = encode(img, transparency=0)  # index 0 transparent
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_image(data, "p.png")
    assert (out[:8] == 255).all()  # transparent -> white
    assert (out[8:] == (255, 0, 0)).all()


def test_palette_without_transparency():
    img = Image.new("P", (16, 16), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    out = decode_image(encode(img), "p.png")
    assert (out == (10, 200, 30)).all()


def test_cmyk_converted():
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in CMYK
    data = encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data, "c.tif")
    assert (out == (255, 0, 0)).all()
    white = decode_image(encode(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "TIFF"), "w.tif")
    assert (white == 255).all()


def test_ycbcr_converted():
    out = np.asarray(to_rgb(Image.new("YCbCr", (8, 8), (128, 128, 128))))
    assert out.shape == (8, 8, 3) and abs(int(out[0, 0, 0]) - 128) <= 1


def test_16bit_png_scaled_by_bit_depth_not_clipped():
    arr = np.array([[65535, 32768, 256, 255]] * 8, dtype=np.uint16)
    arr = np.tile(arr, (1, 2))  # 8x8
    img = Image.fromarray(arr)
    data = encode(img)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data, "deep.png")
    assert out.shape == (8, 8, 3)
    assert out[0, :4, 0].tolist() == [255, 128, 1, 0]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_16bit_big_endian_and_32bit_int():
    big = Image.frombytes("I;16B", (8, 8), np.full((8, 8), 65535, dtype=">u2").tobytes())
    assert (np.asarray(to_rgb(big, "b")) == 255).all()
    i32 = Image.fromarray(np.full((8, 8), 32768, dtype=np.int32), "I")
    assert (np.asarray(to_rgb(i32, "i")) == 128).all()
    too_big = Image.fromarray(np.full((8, 8), 70000, dtype=np.int32), "I")
    with pytest.raises(DataError, match="too_big.tif"):
        to_rgb(too_big, "too_big.tif")


def test_float_mode_rejected_with_name():
    img = Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32), "F")
    data = encode(img, "TIFF")
    with pytest.raises(DataError, match=r"float\.tif.*mode F") as info:
        decode_image(data, "float.tif")
    assert not isinstance(info.value, BadImageError)  # a policy error, never skipped


def test_exif_orientation_applied():
    img = Image.new("RGB", (32, 16), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    out = decode_image(encode(img, "JPEG", exif=exif), "rot.jpg")
    assert out.shape == (32, 16, 3)


@pytest.mark.parametrize("data,reason", [
    (b"", "0 bytes"),
    (b"hello, I am text\n" * 4, "not a recognised image"),
])
def test_undecodable_bytes(data, reason):
    with pytest.raises(BadImageError, match=reason) as info:
        decode_image(data, "dir/bad.png")
    assert "dir/bad.png" in str(info.value)


def test_truncated_jpeg_fails_at_load():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG", quality=95)
    with pytest.raises(BadImageError, match="truncated") as info:
        decode_image(data[: len(data) // 2], "cut.jpg")
    assert "cut.jpg" in str(info.value)


def test_resize_shorter_side_and_centre_crop():
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:30] = (0, 255, 0)
    arr[:, 30:] = (0, 0, 255)
    out = decode_image(encode(Image.fromarray(arr)), "wide.png", image_size=16)
    assert out.shape == (16, 16, 3)
    centre = out[:, 3:13].astype(int)
    assert (centre[..., 1] > 240).all() and (centre[..., 0] < 15).all() and (centre[..., 2] < 15).all()


def test_upscale_and_identity():
    small = Image.new("RGB", (10, 12), (9, 99, 199))
    out = decode_image(encode(small), "s.png", image_size=24)
    assert out.shape == (24, 24, 3)
    assert np.abs(out.astype(int) - (9, 99, 199)).max() <= 1
    same = Image.new("RGB", (16, 16), (1, 2, 3))
    assert fit_to_size(same, 16) is same


def test_large_jpeg_downscaled_with_draft():
    img = Image.new("RGB", (400, 300), (30, 60, 90))
    out = decode_image(encode(img, "JPEG", quality=95), "big.jpg", image_size=32)
    assert out.shape == (32, 32, 3)
    assert np.abs(out.astype(int) - (30, 60, 90)).max() <= 4


@pytest.mark.parametrize("size", [(7, 20), (20, 7), (40, 9), (9, 40)])
def test_tiny_and_extreme_aspect_rejected(size):
    data = encode(Image.new("RGB", size))
    with pytest.raises(DataError, match="odd.png") as info:
        decode_image(data, "odd.png")
    assert not isinstance(info.value, BadImageError)
    with pytest.raises(DataError, match="odd.png"):
        decode_image(data, "odd.png", image_size=16)


def test_aspect_limit_is_inclusive():
    assert decode_image(encode(Image.new("RGB", (32, 8))), "ok.png").shape == (8, 32, 3)
    assert decode_image(encode(Image.new("RGB", (8, 8))), "ok.png").shape == (8, 8, 3)

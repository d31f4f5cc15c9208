"""Context files: every check names the file, the key and the shapes; rows align to images by name."""
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.data import DataError, load_image_data
from ditlab.data.context_demo import CAPTION_TEMPLATES, make_demo_context, word_embedding
from ditlab.data.context_sets import align_to_images, load_context_file, save_context_file


def write(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def good(n=3, m=4, d=5):
    rng = np.random.default_rng(0)
    return dict(embeddings=rng.standard_normal((n, m, d)).astype(np.float32),
                lengths=np.array([2, 4, 0])[:n], names=np.array(["b.png", "a.png", "c.png"])[:n])


@pytest.mark.parametrize("change, pattern", [
    (dict(embeddings=np.zeros((3, 4))), r"key 'embeddings' .* shape \(3, 4\); expected \(N, M, D\)"),
    (dict(embeddings=np.zeros((3, 4, 5), dtype=np.int32)), r"key 'embeddings' .* dtype int32; expected a float"),
    (dict(lengths=None), r"exactly one of key 'mask' \(bool \(N, M\) = \(3, 4\)\) and key 'lengths'.*neither"),
    (dict(mask=np.ones((3, 4), bool)), r"exactly one of key 'mask'.*it has both"),
    (dict(lengths=None, mask=np.full((3, 4), 2, np.uint8)), r"key 'mask' .* dtype uint8 and holds 2 at \[row, "
     r"column\] = \[0, 0\]; a numeric mask may hold only 0 \(padding\) and 1"),
    (dict(lengths=None, mask=np.array(["1"] * 12).reshape(3, 4)), r"key 'mask' .* dtype <U1; expected bool"),
    (dict(lengths=None, mask=np.ones((3, 5), bool)), r"key 'mask' .* shape \(3, 5\); expected \(N, M\) = \(3, 4\)"),
    (dict(lengths=np.array([1, 2])), r"key 'lengths' .* shape \(2,\); expected \(N,\) = \(3,\)"),
    (dict(lengths=np.array([1, 5, 0])), r"key 'lengths' .*row 1 has length 5, outside \[0, M=4\]"),
    (dict(lengths=np.array([1.0, 2.0, 0.0])), r"key 'lengths' .* dtype float64; expected integers"),
    (dict(names=np.array(["a", "b"])), r"key 'names' .* shape \(2,\); expected strings of shape \(N,\) = \(3,\)"),
    (dict(names=np.array(["a", "b", "a"])), r"key 'names' .* names the image 'a' more than once"),
    (dict(labels=np.array([0, -1, 1])), r"key 'labels' .* negative label at row 1"),
    (dict(name=np.array(["a", "b", "c"])), r"unknown key\(s\) \['name'\]"),
])
def test_each_check_names_the_file_key_and_shape(tmp_path, change, pattern):
    arrays = {**good(), **change}
    path = write(tmp_path / "ctx.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(DataError, match=pattern) as err:
        load_context_file(path)
    assert str(path) in str(err.value)


def test_non_finite_real_token_is_an_error_but_padding_is_zeroed(tmp_path):
    arrays = good()
    arrays["embeddings"][0, 3] = np.nan  # padding of row 0 (length 2): never read
    ctx = load_context_file(write(tmp_path / "ok.npz", **arrays))
    assert torch.isfinite(ctx.embeddings).all() and (ctx.embeddings[0, 2:] == 0).all()
    arrays["embeddings"][1, 0] = np.inf  # a real token of row 1
    with pytest.raises(DataError, match=r"key 'embeddings' .* row 1 has a non-finite value"):
        load_context_file(write(tmp_path / "bad.npz", **arrays))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64, np.uint8])
def test_a_0_1_numeric_mask_is_read_as_bool(tmp_path, dtype):
    """Issue 15: masks written as 1 = real token, 0 = padding (the user's notes) load like bool masks."""
    arrays = good()
    ref = load_context_file(write(tmp_path / "lengths.npz", **arrays))
    arrays["embeddings"][0, 3] = np.nan  # padding of row 0 (length 2): zeroed whatever the mask's dtype
    mask = ref.mask.numpy().astype(dtype)
    arrays.pop("lengths")
    ctx = load_context_file(write(tmp_path / "num.npz", **arrays, mask=mask))
    assert ctx.mask.dtype == torch.bool and torch.equal(ctx.mask, ref.mask)
    assert torch.equal(ctx.embeddings, ref.embeddings)


@pytest.mark.parametrize("value", [0.5, -1.0, np.nan])
def test_other_numeric_mask_values_are_refused_naming_file_and_key(tmp_path, value):
    arrays = good()
    mask = (np.arange(4)[None] < arrays.pop("lengths")[:, None]).astype(np.float32)
    mask[2, 3] = value
    path = write(tmp_path / "half.npz", **arrays, mask=mask)
    with pytest.raises(DataError, match=rf"key 'mask' of context file .*half\.npz .*holds {value!r} at "
                                        r"\[row, column\] = \[2, 3\]"):
        load_context_file(path)
    with pytest.raises(DataError, match=rf"key 'mask' of context file .*out\.npz .*holds {value!r}"):
        save_context_file(tmp_path / "out.npz", arrays["embeddings"], mask)
    assert not (tmp_path / "out.npz").exists()
    save_context_file(tmp_path / "ok.npz", arrays["embeddings"], np.clip(np.nan_to_num(mask), 0, 1).round())


def test_missing_file_and_wrong_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_context_file(tmp_path / "nope.npz")
    (tmp_path / "c.pt").write_bytes(b"x")
    with pytest.raises(DataError, match=r"c\.pt must be an \.npz"):
        load_context_file(tmp_path / "c.pt")
    write(tmp_path / "obj.npz", embeddings=np.zeros((1, 1, 1)), lengths=np.array([1]),
          names=np.array(["a"], dtype=object))
    with pytest.raises(DataError, match=r"obj\.npz.*dtype=str"):
        load_context_file(tmp_path / "obj.npz")


def test_lengths_become_a_mask_and_names_align_rows(tmp_path):
    ctx = load_context_file(write(tmp_path / "ctx.npz", **good()))
    assert ctx.mask.tolist() == [[True, True, False, False], [True] * 4, [False] * 4]
    aligned = align_to_images(ctx, ["a.png", "c.png", "b.png"], "data")
    torch.testing.assert_close(aligned.embeddings[0], ctx.embeddings[1])
    torch.testing.assert_close(aligned.embeddings[2], ctx.embeddings[0])
    assert aligned.names == ["a.png", "c.png", "b.png"]
    # A subset of the images: rows of other images are left out, unused padding columns trimmed.
    sub = align_to_images(ctx, ["b.png", "c.png"], "data")
    assert sub.embeddings.shape == (2, 2, 5) and sub.mask.tolist() == [[True, True], [False, False]]


def test_alignment_errors_name_the_file_and_the_images(tmp_path):
    ctx = load_context_file(write(tmp_path / "ctx.npz", **good()))
    with pytest.raises(DataError, match=r"key 'names' of context file .*ctx\.npz lacks 1 of the 3 images of "
                                        r"DATA, e\.g\. 'd\.png'"):
        align_to_images(ctx, ["a.png", "b.png", "d.png"], "DATA")
    unnamed = {k: v for k, v in good().items() if k != "names"}
    ctx = load_context_file(write(tmp_path / "plain.npz", **unnamed))
    with pytest.raises(DataError, match=r"key 'embeddings' of context file .*plain\.npz has shape \(3, 4, 5\): "
                                        r"N=3 rows, but the data set DATA holds 4 images"):
        align_to_images(ctx, ["0", "1", "2", "3"], "DATA")
    assert len(align_to_images(ctx, ["0", "1", "2"], "DATA")) == 3  # without names: data set order
    with pytest.raises(DataError, match=r"shape \(3, 4, 5\): D=5, but the run expects D=8"):
        ctx.check_dim(8, "the run")


def make_folder(root, classes=("cat", "dog"), per_class=3):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_loader_names_are_paths_relative_to_the_root_for_folders_and_zips(tmp_path):
    folder = make_folder(tmp_path / "d")
    names = load_image_data(str(folder), progress=False).names
    assert names == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png"]
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:  # a wrapping folder is not part of the names
        for p in sorted(folder.rglob("*.png")):
            zf.write(p, f"train/{p.relative_to(folder).as_posix()}")
    assert load_image_data(str(tmp_path / "d.zip"), progress=False).names == names
    np.savez(tmp_path / "a.npz", images=np.zeros((3, 8, 8, 3), np.uint8))
    assert load_image_data(str(tmp_path / "a.npz"), progress=False).names == ["0", "1", "2"]


def test_skipped_images_leave_their_names_out(tmp_path):
    folder = make_folder(tmp_path / "d")
    (folder / "cat" / "1.png").write_bytes(b"not a png")
    data = load_image_data(str(folder), on_bad_image="skip", progress=False)
    assert data.names == ["cat/0.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png"]


def test_demo_context_follows_the_class_and_round_trips(tmp_path):
    data = load_image_data(str(make_folder(tmp_path / "d", classes=("sea_lion", "dog"), per_class=20)),
                           progress=False)
    arrays = make_demo_context(data, dim=6, seed=1)
    lengths = arrays["mask"].sum(1)
    assert len(set(lengths.tolist())) > 2  # sets of different lengths, padded
    for caption, label in zip(arrays["captions"], arrays["labels"]):
        assert data.class_names[label].replace("_", " ") in caption
        assert any(caption == t.format(data.class_names[label].replace("_", " ")) for t in CAPTION_TEMPLATES)
    i = arrays["captions"].index(next(c for c in arrays["captions"] if c.startswith("a photo of a")))
    np.testing.assert_array_equal(arrays["embeddings"][i, 1], word_embedding("photo", 6, 1))
    path = save_context_file(tmp_path / "c.npz", **arrays)
    ctx = align_to_images(load_context_file(path), data.names[::-1], data.source)
    np.testing.assert_array_equal(ctx.mask.sum(1).numpy(), lengths[::-1])
    assert ctx.labels.tolist() == data.labels.tolist()[::-1]
    np.savez(tmp_path / "unlabeled.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="no class names"):
        make_demo_context(load_image_data(str(tmp_path / "unlabeled.npz"), progress=False))

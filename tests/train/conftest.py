"""Shared data for the training tests."""
import numpy as np
import pytest

from tests.eval.conftest import standin_path  # noqa: F401  (the stand-in FID network fixture, for ditlab fid)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    """64 structured 16x16 images in 4 classes (a colour per class plus noise): learnable in a few steps."""
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 4
    colours = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40]])
    images = colours[labels][:, None, None, :] + rng.normal(0, 20, (64, 16, 16, 3))
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=np.clip(images, 0, 255).astype(np.uint8), labels=labels)
    return str(path)

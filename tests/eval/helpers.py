"""Helpers for the FID tests: the stand-in network and tiny image sets written to disk."""
import io
import warnings
import zipfile

import numpy as np
import torch
import torch.nn.functional as F


class StandIn(torch.nn.Module):
    """Tiny FID-network stand-in: (N, 3, 299, 299) -> 8x8 average pool -> fixed random linear -> (N, 2048)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("weight", torch.randn(3 * 8 * 8, 2048, generator=g) / 8.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 3
        return F.adaptive_avg_pool2d(x, 8).flatten(1) @ self.weight


def random_images(n, size=32, seed=0):
    """uint8 NHWC images with some spatial structure (smooth gradients plus noise)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3)).astype(np.float64)
    ramp = np.linspace(-60, 60, size)[None, :, None, None] * rng.uniform(-1, 1, (n, 1, 1, 3))
    noise = rng.normal(0, 25, (n, size, size, 3))
    return np.clip(base + ramp + noise, 0, 255).astype(np.uint8)


def write_zip(path, images_nhwc):
    """A flat (unlabeled) ImageFolder zip of PNGs, written in file-name order."""
    from PIL import Image

    with zipfile.ZipFile(path, "w") as zf:
        for i, img in enumerate(images_nhwc):
            buf = io.BytesIO()
            Image.fromarray(img, "RGB").save(buf, format="PNG")
            zf.writestr(f"{i:04d}.png", buf.getvalue())
    return path


def write_folder(path, images_nhwc):
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images_nhwc):
        Image.fromarray(img, "RGB").save(path / f"{i:04d}.png")
    return path


def save_scripted(module, path):
    """torch.jit.script(module).save(path), quiet about TorchScript's deprecation in newer PyTorch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module.eval()).save(str(path))
    return path

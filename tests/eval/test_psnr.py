"""PSNR of super-resolution samples: the formula, the baseline and the CLI."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.cli import main
from ditlab.eval.psnr import psnr_per_image, sr_psnr_report, upsampled_baseline


def test_psnr_formula():
    a = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    b = a.clone()
    b[0] += 10  # MSE 100 -> 10 log10(255^2 / 100)
    p = psnr_per_image(b, a)
    assert p[0].item() == pytest.approx(10 * math.log10(255**2 / 100))
    assert math.isinf(p[1].item())
    with pytest.raises(ValueError, match="shape"):
        psnr_per_image(a[:, :, :2], a)


def test_baseline_is_exact_on_flat_images():
    flat = torch.full((1, 3, 8, 8), 77, dtype=torch.uint8)
    # exact by construction on every kernel path: the bilinear float32 value is 77 up to an ulp, then rounded
    assert torch.equal(upsampled_baseline(flat, 2), flat)
    r = sr_psnr_report(flat, flat, 2)
    assert r["identical_images"] == 1


def test_psnr_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(folder / f"{i}.png")
    samples = tmp_path / "s.npz"
    np.savez(samples, imgs)  # arr_0, as `ditlab sample` writes
    assert main(["psnr", str(samples), "--data", str(tmp_path / "data"), "--factor", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 3 and out["identical_images"] == 3
    # The old name of --data still works, with a warning; a file without metadata needs --factor.
    assert main(["psnr", str(samples), "--ref", str(tmp_path / "data"), "--factor", "2"]) == 0
    assert "--ref is deprecated; use --data" in capsys.readouterr().err
    assert main(["psnr", str(samples), "--data", str(tmp_path / "data")]) == 1
    assert "--factor" in capsys.readouterr().err

"""The small data sample shipped inside the package (used when ``data.path`` is empty).

``assets/cifar10-sample-5k.zip``: the first 500 training images of each CIFAR-10 class (5,000
32x32 JPEGs in ``CLASS/NNNN.jpg`` layout, stored without recompression), made by
``scripts/make_embedded_sample.py`` from a JPEG copy of CIFAR-10 (Krizhevsky, "Learning Multiple
Layers of Features from Tiny Images", 2009). It lets the demo and the tests train offline.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["EMBEDDED_SAMPLE_NAME", "EMBEDDED_SAMPLE_DESCRIPTION", "embedded_sample_path"]

EMBEDDED_SAMPLE_NAME = "cifar10-sample-5k.zip"
EMBEDDED_SAMPLE_DESCRIPTION = "embedded CIFAR-10 sample (5,000 training images, 500 per class)"


def embedded_sample_path() -> Path:
    """Filesystem path of the embedded sample zip (raises FileNotFoundError if it is missing)."""
    candidates = []
    try:
        from importlib.resources import files

        candidates.append(Path(str(files("ditlab") / "assets" / EMBEDDED_SAMPLE_NAME)))
    except Exception:  # noqa: BLE001 - namespace package or unusual loader: use the file layout
        pass
    candidates.append(Path(__file__).resolve().parent.parent / "assets" / EMBEDDED_SAMPLE_NAME)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the embedded sample {EMBEDDED_SAMPLE_NAME} is missing from the ditlab installation "
        f"(looked in {', '.join(str(p) for p in candidates)}); reinstall ditlab, or set data.path"
    )

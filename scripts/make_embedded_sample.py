#!/usr/bin/env python
"""Build the small CIFAR-10 sample embedded in ditlab (``src/ditlab/assets/cifar10-sample-5k.zip``).

    python scripts/make_embedded_sample.py --src ../shared/data/cifar10-train.zip \
        --out src/ditlab/assets/cifar10-sample-5k.zip --per-class 500

The choice is deterministic: for every class folder (sorted by name), the first ``--per-class``
image members in sorted name order. The JPEG bytes are copied as they are (ZIP_STORED, no
re-encoding), with a fixed timestamp so that the output is byte-for-byte reproducible. A README
member and the zip comment record the origin: CIFAR-10 (Krizhevsky, 2009), via a JPEG copy.
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
MAX_BYTES = 8 * 1024 * 1024

README = """\
ditlab embedded sample: {total} CIFAR-10 training images, {per_class} per class
=============================================================================

Classes ({num_classes}): {classes}
Layout: CLASS/NNNN.jpg (ImageFolder), 32x32 RGB JPEG, stored without recompression.
Selection: the first {per_class} images of each class in sorted file-name order of {src_name}.

Origin: the CIFAR-10 data set, Alex Krizhevsky, "Learning Multiple Layers of Features from
Tiny Images", technical report, University of Toronto, 2009
(https://www.cs.toronto.edu/~kriz/cifar.html), via a public JPEG re-encoding of its training
set in ImageFolder layout. Made by scripts/make_embedded_sample.py.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, help="CIFAR-10 zip in CLASS/NNNN.jpg layout")
    ap.add_argument("--out", required=True, help="output zip")
    ap.add_argument("--per-class", type=int, default=500)
    args = ap.parse_args(argv)

    src, out = Path(args.src), Path(args.out)
    by_class: dict[str, list[zipfile.ZipInfo]] = defaultdict(list)
    with zipfile.ZipFile(src) as zin:
        for info in zin.infolist():
            parts = info.filename.split("/")
            if info.is_dir() or len(parts) != 2 or parts[0].startswith((".", "__MACOSX")):
                continue
            if parts[1].startswith(".") or not parts[1].lower().endswith(EXTS):
                continue
            by_class[parts[0]].append(info)
        classes = sorted(by_class)
        if not classes:
            sys.exit(f"no CLASS/file images found in {src}")
        short = [c for c in classes if len(by_class[c]) < args.per_class]
        if short:
            sys.exit(f"classes with fewer than {args.per_class} images in {src}: {short}")
        total = args.per_class * len(classes)
        readme = README.format(
            total=total,
            per_class=args.per_class,
            num_classes=len(classes),
            classes=", ".join(classes),
            src_name=src.name,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zout:
            zout.comment = (
                f"ditlab embedded sample: {total} CIFAR-10 training images (Krizhevsky 2009, "
                f"JPEG copy), first {args.per_class} per class; see README.txt"
            ).encode()
            info = zipfile.ZipInfo("README.txt", date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            zout.writestr(info, readme, compress_type=zipfile.ZIP_STORED)
            for cls in classes:
                for member in sorted(by_class[cls], key=lambda i: i.filename)[: args.per_class]:
                    info = zipfile.ZipInfo(member.filename, date_time=FIXED_TIME)
                    info.external_attr = 0o644 << 16
                    zout.writestr(info, zin.read(member), compress_type=zipfile.ZIP_STORED)
    size = tmp.stat().st_size
    if size > MAX_BYTES:
        tmp.unlink()
        sys.exit(f"sample would be {size / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB limit")
    tmp.replace(out)
    print(f"wrote {out}: {total} images from {len(classes)} classes, {size / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

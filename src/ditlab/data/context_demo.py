"""A demo context file without any text encoder: "caption" tokens made from each image's class name.

Each image gets a caption from a few templates ("a photo of a {class}", ...; chosen per image, so the
sets vary in length) and each word of it a fixed random embedding (seeded by the word itself, so the
same word is the same vector in every file made with one seed). That is enough to exercise context
sets end to end offline: the class is recoverable from the set, the lengths vary, and padding and
masks are real. docs/context_sets.md shows how to make a real file with a text encoder.
"""
from __future__ import annotations

import zlib

import numpy as np

from ditlab.data.dataset import ImageData
from ditlab.data.images import DataError

__all__ = ["CAPTION_TEMPLATES", "demo_captions", "word_embedding", "make_demo_context"]

# Of different lengths on purpose: the context sets of one batch are padded to the longest.
CAPTION_TEMPLATES = (
    "a {}",
    "a photo of a {}",
    "a blurry photo of the {}",
    "a close-up photo of a small {}",
    "a low resolution photo of the {} in the wild",
)


def word_embedding(word: str, dim: int, seed: int = 0) -> np.ndarray:
    """A fixed unit-variance vector per (word, seed); crc32 rather than hash(), which is salted per process."""
    rng = np.random.default_rng([seed, zlib.crc32(word.encode("utf-8"))])
    return rng.standard_normal(dim).astype(np.float32)


def demo_captions(data: ImageData, seed: int = 0) -> list[str]:
    if not data.class_names:
        raise DataError(f"the data set {data.source} has no class names (no class folders or labels), and the "
                        "demo captions are made from them; make a real context file instead "
                        "(docs/context_sets.md)")
    rng = np.random.default_rng(seed)
    template = rng.integers(len(CAPTION_TEMPLATES), size=len(data))
    return [CAPTION_TEMPLATES[k].format(data.class_names[c].replace("_", " "))
            for k, c in zip(template.tolist(), data.labels.tolist())]


def make_demo_context(data: ImageData, dim: int = 64, seed: int = 0) -> dict:
    """Arrays of a context file for ``data`` (keys as in :mod:`ditlab.data.context_sets`)."""
    if dim < 1:
        raise DataError(f"the embedding width must be at least 1, not {dim}")
    captions = demo_captions(data, seed)
    words = [c.split() for c in captions]
    longest = max(len(w) for w in words)
    vocab = {w: word_embedding(w, dim, seed) for w in sorted({w for ws in words for w in ws})}
    embeddings = np.zeros((len(data), longest, dim), dtype=np.float32)
    mask = np.zeros((len(data), longest), dtype=bool)
    for i, ws in enumerate(words):
        embeddings[i, : len(ws)] = np.stack([vocab[w] for w in ws])
        mask[i, : len(ws)] = True
    return dict(embeddings=embeddings, mask=mask, names=list(data.names), labels=data.labels.numpy(),
                captions=captions)

"""Which images of a held-out set an evaluation uses when it needs fewer than the set holds.

Image folders and zips list files class by class (``folder.py``), so "the first N images" of
CIFAR-10's test split are N airplanes and automobiles: a conditional evaluation on them (super-
resolution inputs, LIFT's lo-oracle path, the per-node error grid, the collapse diagnosis) would
be scored on two classes against statistics of ten. Every such evaluation takes this seeded subset
instead, spread over the whole set, and every command that pairs samples with originals (``ditlab
psnr``) takes the same one, so the pairing holds.
"""
from __future__ import annotations

import torch

SUBSET_SEED = 0


def evaluation_subset(total: int, num: int, seed: int = SUBSET_SEED) -> torch.Tensor:
    """Indices (num,) of a seeded random subset of range(total), in random order (so that the first
    rows of a sample grid show several classes too); all of them in order (0, 1, ..., total - 1)
    when num == total, so full-set evaluations keep the data set's order."""
    if num > total:
        raise ValueError(f"asked for {num} images of a set of {total}")
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    if num == total:
        return torch.arange(total)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=g)[:num]

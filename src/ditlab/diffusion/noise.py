"""Noise drawn per sample index, so a sample set does not depend on batch size, device or GPU count.

Sample i of a run with seed K always gets the same initial noise and the same stochastic-step
noise, whatever batch it lands in. Draws happen on the CPU (identical on every machine) and are
moved to the target device; at 32x32 this costs far less than one network evaluation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for (run seed, sample index)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


class PerSampleRNG:
    """The noise of one batch: sample ``indices[r]``'s own stream of ``seed`` for row r, moved to ``device``."""

    def __init__(self, seed: int, indices: Sequence[int], device: torch.device | str = "cpu"):
        self.seed = int(seed)
        self.indices = [int(i) for i in indices]
        self.device = torch.device(device)
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in self.indices]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, *shape: int) -> torch.Tensor:
        """(B, *shape) standard normal, row i from sample i's own stream."""
        out = torch.stack([torch.randn(shape, generator=g) for g in self.generators])
        return out.to(self.device)

    def randint(self, high: int) -> torch.Tensor:
        return torch.stack([torch.randint(high, (), generator=g) for g in self.generators]).to(self.device)

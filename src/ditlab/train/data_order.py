"""Which examples each step sees: a fresh permutation per epoch, derived from (seed, epoch).

The position (epoch, offset) is all the state there is, so a resumed run continues with exactly
the batches the uninterrupted run would have seen: no repeats, no skips.
"""
from __future__ import annotations

import torch


class EpochSampler:
    def __init__(self, num_examples: int, batch_size: int, seed: int, epoch: int = 0, offset: int = 0):
        if num_examples < batch_size:
            raise ValueError(f"the data set has {num_examples} examples, fewer than train.batch_size={batch_size}")
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.epoch, self.offset = epoch, offset
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_examples, generator=g)

    def next_indices(self) -> torch.Tensor:
        """Indices of the next batch (CPU int64). The tail of an epoch that cannot fill a batch is dropped."""
        if self.offset + self.batch_size > self.num_examples:
            self.epoch, self.offset = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        idx = self._perm[self.offset : self.offset + self.batch_size]
        self.offset += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "num_examples": self.num_examples}

    def load_state_dict(self, state: dict) -> None:
        if state["num_examples"] != self.num_examples:
            raise ValueError(f"the checkpoint was taken on a data set of {state['num_examples']} examples, "
                             f"this one has {self.num_examples}: the data order cannot be resumed")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._perm = self._permutation(self.epoch)

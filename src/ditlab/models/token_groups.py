"""Which conditioning group each token of the sequence uses (its stream's noise level, the class tokens' t = 0).

A multi-stream DiT modulates the tokens of each stream with that stream's adaLN shift / scale / gate: a
(B, G, D) modulation is spread over the (B, N, D) tokens by a token -> group map. Gathering with an index
tensor (``t[:, index]``) works for any map, but its backward is a scatter-add into G rows, which CUDA runs
with atomics that every token of a stream contends for (hundreds per address; on an H100 the superres step's
MLP-gate scatter took 0.12 ms a block, where reading its inputs once takes ~0.045 ms at the copy rate), and
whose summation order changes from run to run.

The streams are contiguous ranges of the sequence, so the map is a few runs of consecutive tokens:
:class:`TokenGroups` carries them beside the index. :func:`gather_groups` then builds the spread tensor from
broadcast views (one run: the group's row broadcasts; several: one expanded row per run, concatenated), whose
backward is a plain sum per run: no atomics, the same order every run. The forward values are the same
elements. The fused Triton kernels take the index tensor (``TokenGroups.index``); they sum per group without
atomics themselves.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional, Union

import torch

# Beyond this many runs the concatenation of expanded rows stops paying (a scattered map): gather by index.
# DITLAB_TOKEN_RUNS_MAX=0 gathers always (the path before the runs; measurement only, e.g. a paired bench).
MAX_RUNS = int(os.environ.get("DITLAB_TOKEN_RUNS_MAX", "8"))


class TokenGroups(NamedTuple):
    """Token n -> group ``index[n]`` (a long tensor of N, for the kernels), and the same map as
    ``runs``: (group, start, end) for each run of consecutive tokens of one group, in order, covering [0, N)."""

    index: torch.Tensor
    runs: tuple[tuple[int, int, int], ...]


Index = Optional[Union[torch.Tensor, TokenGroups]]


def runs_of(lengths: list[int], first_group: int = 0) -> tuple[tuple[int, int, int], ...]:
    """The runs of groups first_group, first_group + 1, ... over consecutive ranges of the given lengths."""
    runs, start = [], 0
    for i, n in enumerate(lengths):
        if n:
            runs.append((first_group + i, start, start + n))
        start += n
    return tuple(runs)


def slice_groups(index: Index, start: int, end: int) -> Index:
    """The map of the tokens [start, end), renumbered from 0 (``index[start:end]``, runs clipped and shifted)."""
    if not isinstance(index, TokenGroups):
        return None if index is None else index[start:end]
    runs = tuple((g, max(s, start) - start, min(e, end) - start) for g, s, e in index.runs
                 if min(e, end) > max(s, start))
    return TokenGroups(index.index[start:end], runs)


def index_tensor(index: Index) -> Optional[torch.Tensor]:
    """The token -> group tensor of either form (None stays None)."""
    return index.index if isinstance(index, TokenGroups) else index


def gather_groups(t: torch.Tensor, index: Index) -> torch.Tensor:
    """(B, G, ...) per-group tensor -> one that broadcasts against the tokens (B, N, ...): t itself without an
    index, t[:, index] with one; from TokenGroups' runs, broadcast views instead of an indexed gather."""
    if index is None:
        return t
    if isinstance(index, TokenGroups):
        if len(index.runs) > MAX_RUNS:
            return t[:, index.index]
        if len(index.runs) == 1:
            g = index.runs[0][0]
            return t[:, g:g + 1]  # every token in one group: its row broadcasts over them
        return torch.cat([t[:, g:g + 1].expand(-1, e - s, *t.shape[2:]) for g, s, e in index.runs], dim=1)
    return t[:, index]

"""Linear layers that hold several maps stacked by output rows: attention's q, k, v (and cross-attention's k, v),
the adaLN modulation's shift / scale / gate chunks, SwiGLU's gate and value. One GEMM reads the input once; the
forward splits the output into equal contiguous chunks. ``output_parts`` records how many maps a layer holds,
for code that treats each as its own matrix (Muon's orthogonalisation per map: optim.muon_split)."""
from __future__ import annotations

import torch.nn as nn


def stacked_linear(in_features: int, out_features_each: int, parts: int, bias: bool = True) -> nn.Linear:
    """An nn.Linear of ``parts`` maps in_features -> out_features_each, stacked by output rows (map i is rows
    [i * out_features_each, (i + 1) * out_features_each) of the weight); a plain nn.Linear in the state dict."""
    layer = nn.Linear(in_features, parts * out_features_each, bias=bias)
    layer.output_parts = parts
    return layer


def output_parts(layer: nn.Module) -> int:
    """How many stacked maps a linear layer holds (1 for a plain one)."""
    return int(getattr(layer, "output_parts", 1))

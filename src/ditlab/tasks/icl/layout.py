"""Token layout and attention mask of an in-context regression prompt with N points.

Three token streams, each one token per point, each with the sin-cos position of its point index i
(so tokens of one point share a position and the network can pair them):

- ``x``       x_i (d features), noise level 0;
- ``y_ctx``   y_i clean (1 feature), noise level 0: the context copy later points read;
- ``y_query`` y_i noised (1 feature), noise level t > 0: the copy that is generated.

Reading the x and clean-y tokens in the interleaved order x_1, y_1, x_2, y_2, ... of the note
(and of Garg et al.), the mask is causal over that order, and each noised y_i is a side branch:

- x_i      sees x_1..x_i and y_1..y_{i-1}        (everything before it in the interleaved order)
- y_i      sees x_1..x_i and y_1..y_i
- noised y_i sees x_1..x_i, y_1..y_{i-1} and itself, and no token sees it but itself.

So query i is the prediction of y_i from the i - 1 earlier pairs and x_i, and all N prefixes are
trained in one pass. No clean or noised token ever sees y_i clean from query i, nor any later point.
"""
from __future__ import annotations

import torch

from ditlab.models.streams import StreamSpec

X, Y_CTX, Y_QUERY = "x", "y_ctx", "y_query"


def icl_streams(d: int, n_points: int) -> list[StreamSpec]:
    """Stream order fixes token order: x tokens [0, N), clean y [N, 2N), noised y [2N, 3N)."""
    return [
        StreamSpec(X, d, n_points, kind="tokens", positions="index", predict=False),
        StreamSpec(Y_CTX, 1, n_points, kind="tokens", positions="index", predict=False),
        StreamSpec(Y_QUERY, 1, n_points, kind="tokens", positions="index", predict=True),
    ]


def prefix_attention_mask(n_points: int, device=None) -> torch.Tensor:
    """(3N, 3N) bool, True = the query token (row) may attend to the key token (column)."""
    i = torch.arange(n_points, device=device)
    upto = i[None, :] <= i[:, None]  # key point j <= query point i
    before = i[None, :] < i[:, None]  # j < i
    eye = i[None, :] == i[:, None]
    none = torch.zeros(n_points, n_points, dtype=torch.bool, device=device)
    #                 keys:  x      y_ctx   y_query
    rows = [torch.cat([upto, before, none], dim=1),  # queries x_i
            torch.cat([upto, upto, none], dim=1),  # queries clean y_i
            torch.cat([upto, before, eye], dim=1)]  # queries noised y_i
    return torch.cat(rows, dim=0)

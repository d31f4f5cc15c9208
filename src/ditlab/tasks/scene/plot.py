"""Pictures of scenes: 3-D scatter plots of the scene (grey), its target object (blue) and
generated points (red), for training previews and `ditlab scene eval`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch


def scene_figure(features: torch.Tensor, mask: torch.Tensor, generated: torch.Tensor,
                 titles: Optional[list[str]] = None, ncols: int = 3, suptitle: Optional[str] = None):
    """One 3-D panel per scene. features (B, P, 4) xyz + target flag, mask (B, P), generated (B, K, 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    B = len(features)
    ncols = min(ncols, B)
    nrows = math.ceil(B / ncols)
    fig = plt.figure(figsize=(3.6 * ncols, 3.6 * nrows), dpi=80)
    for i in range(B):
        ax = fig.add_subplot(nrows, ncols, i + 1, projection="3d")
        pts = features[i][mask[i]]
        is_target = pts[:, 3] > 0.5
        scene, target = pts[~is_target, :3].numpy(), pts[is_target, :3].numpy()
        gen = generated[i].float().numpy()
        ax.scatter(*scene.T, s=2, c="0.7", depthshade=False, label="scene")
        ax.scatter(*target.T, s=3, c="tab:blue", depthshade=False, label="target object")
        ax.scatter(*gen.T, s=6, c="tab:red", depthshade=False, label="generated")
        ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
        ax.set_xticklabels([]), ax.set_yticklabels([]), ax.set_zticklabels([])
        if titles:
            ax.set_title(titles[i], fontsize=8)
        if i == 0:
            ax.legend(loc="upper left", fontsize=7, markerscale=3)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95 if suptitle else 1))
    return fig


def figure_array(fig) -> torch.Tensor:
    """A matplotlib figure -> uint8 (3, H, W), then closed."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1)


def save_figure(fig, path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

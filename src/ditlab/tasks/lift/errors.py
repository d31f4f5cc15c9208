"""Per-node errors of a LIFT model over the (t_hi, t_lo) grid, and their heat maps.

For every node (t_hi = levels[i], t_lo = levels[j]) of an (n x n) grid, held-out images are noised
at those two levels (the same noise draws at every node: common random numbers make neighbouring
nodes comparable), the model predicts x0 for both scales, and the mean squared error per pixel of
each scale is recorded. The dp-* sampling paths (ditlab.tasks.lift.paths) plan on these maps.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ditlab.imageio import atomic_savez
from ditlab.tasks.image.task import to_model_range
from ditlab.tasks.lift.model import HI, LO
from ditlab.tasks.superres.model import downsample


@dataclass
class NodeErrors:
    levels: np.ndarray  # (n,) noise levels, 1 (noise) -> 0 (clean); the same for both scales
    mse_hi: np.ndarray  # (n, n) [i, j]: high-resolution x0 MSE per element at (levels[i], levels[j])
    mse_lo: np.ndarray  # (n, n) low-resolution x0 MSE per element at the same node
    dims_hi: int  # elements (channels x pixels) of a high-resolution image
    dims_lo: int
    num_images: int


def save_node_errors(path, errors: NodeErrors) -> Path:
    return atomic_savez(path, levels=errors.levels, mse_hi=errors.mse_hi, mse_lo=errors.mse_lo,
                        dims_hi=errors.dims_hi, dims_lo=errors.dims_lo, num_images=errors.num_images)


def load_node_errors(path) -> NodeErrors:
    with np.load(path) as z:
        missing = {"levels", "mse_hi", "mse_lo", "dims_hi", "dims_lo", "num_images"} - set(z.files)
        if missing:
            raise ValueError(f"{path} is not a LIFT error grid: it lacks {sorted(missing)}")
        errors = NodeErrors(z["levels"], z["mse_hi"], z["mse_lo"], int(z["dims_hi"]), int(z["dims_lo"]),
                            int(z["num_images"]))
    n = len(errors.levels)
    if errors.mse_hi.shape != (n, n) or errors.mse_lo.shape != (n, n):
        raise ValueError(f"{path}: mse_hi {errors.mse_hi.shape} and mse_lo {errors.mse_lo.shape} must be ({n}, {n})")
    return errors


@torch.no_grad()
def measure_node_errors(task, model: torch.nn.Module, images: torch.Tensor, labels, grid: int,
                        batch_size: int = 256, seed: int = 0, device="cpu", progress: bool = False,
                        autocast_dtype=None) -> NodeErrors:
    """Errors of ``model`` on uint8 ``images`` (N, C, H, W) over the (grid + 1)^2 nodes of the
    schedule's ``grid``-step sampling grid. ``labels`` (N,) for a class-conditional model (else None);
    ``progress``: a bar over the (batch, node) evaluations; ``autocast_dtype``: the network's precision (None:
    fp32), that of the sampling the planned paths serve."""
    from tqdm import tqdm

    from ditlab.generation import autocast_context

    device = torch.device(device)
    levels = task.objective.schedule.time_grid(grid).double().numpy()
    n, N = len(levels), len(images)
    gen = torch.Generator().manual_seed(seed)
    hi_all = to_model_range(images)
    noise_hi_all = torch.randn(hi_all.shape, generator=gen)
    lo_shape = downsample(hi_all[:1], task.factor).shape[1:]
    noise_lo_all = torch.randn((N, *lo_shape), generator=gen)
    sq = {HI: np.zeros((n, n)), LO: np.zeros((n, n))}
    bar = tqdm(total=-(-N // batch_size) * n * n, unit="node", desc="node errors", disable=not progress)
    for start in range(0, N, batch_size):
        rows = slice(start, start + batch_size)
        x0 = {HI: hi_all[rows].to(device)}
        x0[LO] = downsample(x0[HI], task.factor)
        noise = {HI: noise_hi_all[rows].to(device), LO: noise_lo_all[rows].to(device)}
        B = x0[HI].shape[0]
        denoise = task.denoiser(model, {"labels": labels[rows].to(device)} if labels is not None else {})
        for i in range(n):
            for j in range(n):
                t = {HI: torch.full((B,), float(levels[i]), device=device),
                     LO: torch.full((B,), float(levels[j]), device=device)}
                x_t = {k: task.objective.noised(x0[k], noise[k], t[k].view(-1, 1, 1, 1), task.objective.schedule_of(k))
                       for k in (HI, LO)}
                with autocast_context(device, autocast_dtype):
                    pred = denoise(x_t, t, torch.zeros(B, dtype=torch.bool, device=device))
                for k in (HI, LO):
                    sq[k][i, j] += float(((pred[k][0].float() - x0[k]) ** 2).mean(dim=(1, 2, 3)).sum())
                bar.update()
    bar.close()
    dims_hi, dims_lo = int(np.prod(hi_all.shape[1:])), int(np.prod(lo_shape))
    return NodeErrors(levels, sq[HI] / N, sq[LO] / N, dims_hi, dims_lo, N)


def plot_node_errors(errors: NodeErrors, out, paths: dict | None = None, title: str = "") -> Path:
    """Heat maps (log10 MSE; clean nodes blank) of both scales' x0 errors over (t_lo, t_hi), with ``paths`` (name ->
    TimePath over (hi, lo)) drawn on top. Written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lv = errors.levels
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), constrained_layout=True)
    for ax, (name, mse) in zip(axes, (("high resolution", errors.mse_hi), ("low resolution", errors.mse_lo))):
        # Clean nodes have no error (the input is x0): blank them so they do not stretch the colour scale.
        with np.errstate(divide="ignore"):
            shown = np.where(mse > 0, np.log10(np.where(mse > 0, mse, 1.0)), np.nan)
        im = ax.pcolormesh(lv, lv, shown, shading="nearest", cmap="viridis")
        fig.colorbar(im, ax=ax, label="log10 x0 MSE per element")
        for label, path in (paths or {}).items():
            col = {s: k for k, s in enumerate(path.streams)}
            ax.plot(path.times[:, col[LO]].numpy(), path.times[:, col[HI]].numpy(), marker=".", label=label)
        ax.set(xlabel="t_lo", ylabel="t_hi", title=f"{name} error", xlim=(1.02, -0.02), ylim=(1.02, -0.02))
        if paths:
            ax.legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

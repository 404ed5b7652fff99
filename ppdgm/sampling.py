"""Drawing from a trained model and writing image grids."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyro.poutine as poutine
import torch


@torch.no_grad()
def generate(model: Callable, n: int, obs_site: str = "x", mean: bool = True) -> torch.Tensor:
    """``n`` draws of the observed site from the model side (the likelihood's mean when ``mean``)."""
    trace = poutine.trace(model).get_trace(**{obs_site: None, "batch_size": n})
    site = trace.nodes.get(obs_site)
    if site is None:
        raise ValueError(f"the model has no site {obs_site!r}")
    if mean:
        try:
            return site["fn"].mean.detach()
        except NotImplementedError:
            pass
    return site["value"].detach()


def image_grid(images: torch.Tensor, shape: tuple[int, int], ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile flat images (n, H*W) into one 2-D array with ``pad`` pixels of background between them."""
    images = images.detach().cpu().float().reshape(-1, *shape).clamp(0, 1).numpy()
    n = images.shape[0]
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    h, w = shape
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    return grid


def save_image_grid(
    images: torch.Tensor, shape: tuple[int, int], path: str | Path, ncols: int | None = None, scale: int = 1
) -> Path:
    """Write a PNG grid of flat images (values in [0, 1]), each pixel ``scale`` x ``scale``; returns the path."""
    from matplotlib.image import imsave

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(images, shape, ncols)
    if scale > 1:
        grid = np.kron(grid, np.ones((scale, scale), dtype=grid.dtype))
    imsave(path, grid, cmap="gray", vmin=0.0, vmax=1.0)
    return path


def plot_samples_2d(panels: list[tuple[str, torch.Tensor]], dataset, path: str | Path, title: str = "") -> Path:
    """One panel per (label, samples (n, 2)): the samples (red) over the data set's true density (blue)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = dataset.test.min(0).values - 1.0, dataset.test.max(0).values + 1.0
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], 300), torch.linspace(lo[1], hi[1], 300), indexing="xy")
    density = dataset.log_density(torch.stack([gx, gy], -1).reshape(-1, 2)).exp().reshape(300, 300)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, (label, xy) in zip(axes[0], panels):
        xy = xy.detach().cpu().reshape(-1, 2).numpy()
        ax.contourf(gx.numpy(), gy.numpy(), density.numpy(), levels=20, cmap="Blues")
        ax.scatter(xy[:, 0], xy[:, 1], s=2, c="tab:red", alpha=0.5)
        ax.set_xlim(float(lo[0]), float(hi[0]))
        ax.set_ylim(float(lo[1]), float(hi[1]))
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

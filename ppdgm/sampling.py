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


def save_image_grid(images: torch.Tensor, shape: tuple[int, int], path: str | Path, ncols: int | None = None) -> Path:
    """Write a PNG grid of flat images (values in [0, 1]); returns the path."""
    from matplotlib.image import imsave

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, image_grid(images, shape, ncols), cmap="gray", vmin=0.0, vmax=1.0)
    return path

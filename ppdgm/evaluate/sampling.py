"""Drawing from a trained model and writing image grids."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyro.poutine as poutine
import torch

from ppdgm.errors import UsageError, positive_int
from ppdgm.programs.batch import Batch, Key, as_rows
from ppdgm.programs.handlers import distribution_of, value_of
from ppdgm.programs.pair import ProgramPair
from ppdgm.programs.sites import ConventionError, accepts
from ppdgm.runtime.storage import atomic_path
from ppdgm.training.run import Run


@torch.no_grad()
def sample(
    model: Callable | Any,
    n: int | None = None,
    *,
    like: Any = None,
    condition: torch.Tensor | Mapping[Key, torch.Tensor] | None = None,
    mean: bool = False,
    obs_site: str | None = None,
    arguments: Callable | None = None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """``n`` draws of the model's observed site from the model side (its likelihood's mean when ``mean``).

    When no data column holds the observed site's values (a program called through ``arguments=``, a DMM's site per
    time step, an observed site that reads a masked or transformed column), the draws of *every* observed site are
    returned as a dict from site name to values, in the order of the programs' arguments.

    Args:
        model: a trained :class:`~ppdgm.training.run.Run` (its model and data shape are known), or a Pyro model.
        n: number of rows; defaults to the rows of ``condition``.
        like: for a bare model, a batch of data (or the data) it can be called with: it fixes the arguments'
            shapes and, for a conditional model, the inputs used when no ``condition`` is given.
        condition: the inputs of a conditional model (columns no observed site reads): a tensor when there is
            one such column, else a dict from column (position or name) to tensor; one row per draw.
        mean: return the mean of the observed site's distribution instead of a draw.
        obs_site: which observed site to return, when the model has several.
        arguments: for a bare model, the function that builds its arguments from a batch (``fit(arguments=...)``).

    The model runs as in training's model side: with its observed columns ``None`` when it takes a
    ``batch_size`` argument, else under ``poutine.uncondition`` on a placeholder batch.
    """

    if isinstance(model, Run):
        programs, scope = model.programs, cast(contextlib.AbstractContextManager, model.params())
        if obs_site is not None and obs_site != programs.obs_site:
            with model.params():
                programs = ProgramPair.inspected(
                    model.model, None, model.programs.example, obs_site=obs_site, arguments=model.programs.arguments
                )
    else:
        if like is None:
            raise UsageError("sampling from a bare model needs like=<a batch of data it can be called with>")
        programs = ProgramPair.inspected(model, None, as_rows(like), obs_site=obs_site, arguments=arguments)
        scope = contextlib.nullcontext({})
    inputs = programs.input_keys(programs.example)
    if condition is not None:
        if not inputs:
            raise ConventionError("condition= was given but the model has no inputs (every data column is observed)")
        if torch.is_tensor(condition):
            if len(inputs) != 1:
                raise ConventionError(f"the model has several inputs {inputs}; give condition as a dict by column")
            condition = {inputs[0]: condition}
        unknown = sorted(set(condition) - set(inputs), key=str)
        if unknown:
            raise ConventionError(f"condition names column(s) {unknown} that are not inputs of the model {inputs}")
        sizes = {int(v.shape[0]) for v in condition.values()}
        if len(sizes) != 1 or (n is not None and n not in sizes):
            raise UsageError(f"condition has {sorted(sizes)} rows; give one row per draw (n={n})")
        n = sizes.pop()
    if n is None:
        raise UsageError("give the number of draws n, or condition=... with one row per draw")
    rows = programs.placeholder(positive_int("n", n))
    if condition and isinstance(rows, Batch):
        rows = rows.replace({k: v.to(programs.observed_of(rows).device) for k, v in condition.items()})
    with scope:
        dream = programs.model_side(rows)
    if not programs.holds_observations():
        return {name: _draw(dream.nodes[name], mean) for name in programs.structure.observed_sites}
    return programs.as_column(_draw(dream.nodes[programs.primary_site], mean), programs.observed_of(rows))


def sample_rows(model: Callable | Any, n: int | None = None, **options: Any) -> torch.Tensor:
    """:func:`sample` where the draws must fill the data's rows (images to save, samples to score)."""
    draws = sample(model, n, **options)
    if isinstance(draws, dict):
        raise ConventionError(
            f"no data column holds the draws of the observed site(s) {list(draws)}; ppdgm.sample returns them by "
            "site name"
        )
    return draws


def _draw(site: Any, mean: bool) -> torch.Tensor:
    """A generated site's value, or its distribution's mean."""
    value = site["value"]
    if mean:
        with contextlib.suppress(NotImplementedError):
            value = distribution_of(site).mean
    return value.detach()


@torch.no_grad()
def generate(model: Callable, n: int, obs_site: str = "x", mean: bool = True) -> torch.Tensor:
    """``n`` draws of the observed site of a model written as ``model(x=None, batch_size=None)``.

    The presets' models are; for any Pyro model (a tutorial's ``model(x)``, a conditional model) use
    :func:`sample`, which needs an example batch.
    """

    if not accepts(model, "batch_size", named=True):
        raise ConventionError(
            "generate() calls model(x=None, batch_size=n), but the model has no batch_size parameter; use "
            "ppdgm.sample(run, n) or ppdgm.sample(model, n, like=<a batch of data>)"
        )

    trace = poutine.trace(model).get_trace(**{obs_site: None, "batch_size": positive_int("n", n)})
    site = trace.nodes.get(obs_site)
    if site is None:
        raise UsageError(f"the model has no site {obs_site!r}")
    if mean:
        try:
            return distribution_of(site).mean.detach()
        except NotImplementedError:
            pass
    return value_of(site).detach()


def image_grid(images: torch.Tensor, shape: tuple[int, ...], ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile flat images (n, H*W) into one 2-D array with ``pad`` pixels of background between them."""
    pixels = images.detach().cpu().float().reshape(-1, *shape).clamp(0, 1).numpy()
    n = pixels.shape[0]
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    h, w = shape
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad), dtype=np.float32)
    for i, img in enumerate(pixels):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    return grid


def save_image_grid(
    images: torch.Tensor, shape: tuple[int, ...], path: str | Path, ncols: int | None = None, scale: int = 1
) -> Path:
    """Write a PNG grid of flat images (values in [0, 1]), each pixel ``scale`` x ``scale``; returns the path."""
    from matplotlib.image import imsave

    path = _png(path)
    grid = image_grid(images, shape, ncols)
    if scale > 1:
        grid = np.kron(grid, np.ones((scale, scale), dtype=grid.dtype))
    with atomic_path(path, "image") as tmp:
        imsave(tmp, grid, cmap="gray", vmin=0.0, vmax=1.0)
    return path


def _png(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"images are written as PNG: give a path ending in .png, got {str(path)!r}")
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
        points = xy.detach().cpu().reshape(-1, 2).numpy()
        ax.contourf(gx.numpy(), gy.numpy(), density.numpy(), levels=20, cmap="Blues")
        ax.scatter(points[:, 0], points[:, 1], s=2, c="tab:red", alpha=0.5)
        ax.set_xlim(float(lo[0]), float(hi[0]))
        ax.set_ylim(float(lo[1]), float(hi[1]))
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = _png(path)
    with atomic_path(path, "figure") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path

"""Rows and sites: site scores, batch layouts, dreamt rows and the reduction of particles."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pyro
import torch
from pyro.poutine.trace_struct import Trace

from ppdgm.errors import UsageError
from ppdgm.programs.batch import Batch, Data
from ppdgm.programs.handlers import distribution_of
from ppdgm.programs.inspection import plate_rows
from ppdgm.programs.sites import (
    Structure,
)


def site_score(name: str, site: Any, detach_params: bool = False) -> torch.Tensor:
    """A sample site's log-density at its value, scaled and masked as Pyro scores it (``detach_params``: with the
    distribution's parameters cut from the graph); a value outside the support is named by its site."""
    fn = distribution_of(site)
    if detach_params:
        fn = pyro.distributions.util.detach(fn)
    try:
        lp = fn.log_prob(site["value"])
    except ValueError as err:  # Pyro's validation, on in the first step: the value outside the support
        first = str(err).strip().splitlines()[0]
        raise UsageError(f"site {name!r} cannot score its value: {first}") from err
    return _scale_and_mask(lp, site["scale"], site["mask"])


def _scale_and_mask(lp: torch.Tensor, scale: Any, mask: Any) -> torch.Tensor:
    """Pyro's ``scale_and_mask`` without its host read of a tensor scale (a subsample plate's, an annealing factor)."""
    if mask is None or mask is True:
        return lp if isinstance(scale, int | float) and scale == 1 else lp * scale
    if mask is False:
        return torch.zeros_like(lp)
    return torch.where(mask, lp * scale, lp.new_zeros(()))


_ROWS = "ppdgm_rows"


#: what :meth:`ProgramPair.inspect` learns from a batch, kept per layout of the batch
PER_LAYOUT = (
    "example", "_data_ndim", "_structure", "obs_site", "observed_sites", "known_guide_sites", "local_params",
    "obs_distribution", "_generate_with_none",
)  # fmt: skip


def data_layout(x: Data) -> Hashable:
    """Which columns a batch has (not their shapes): a tensor of rows, or a batch's keys with the absent ones."""
    if isinstance(x, Batch):
        return tuple((key, column is None) for key, column in x.items())
    return "rows"


def remember_rows(trace: Trace, rows: Data) -> Trace:
    vars(trace)[_ROWS] = rows
    return trace


#: what to do with a pair whose generated observations no column holds
GENERATED_ROWS_HINT = (
    "pass generated_rows= (a function from the generated values to the batch's rows) for the sleep phases "
    "(wake-sleep, rws), or train the pair with a data-side method (vae, iwae) and evaluate it with ppdgm.evaluate "
    "(ppdgm.sample returns every observed site's draws)"
)


def generated_sites(dream: Trace, structure: Structure) -> list[str]:
    """The sites of a model-side trace that the model observes on data: the ones the dream generated."""
    return [
        name
        for name, site in dream.nodes.items()
        if site["type"] == "sample" and ((site["infer"] or {}).get("was_observed") or name in structure.observed_sites)
    ]


def describe_value(value: Any) -> str:
    return f"a tensor of shape {tuple(value.shape)}" if torch.is_tensor(value) else f"a {type(value).__name__}"


def dream_rows(dream: Trace) -> Data:
    """The rows a model-side trace (:meth:`ProgramPair.model_side`, :meth:`ProgramPair.reconstruct`) was dreamt
    for: its inputs, and its observed columns' shapes."""
    return vars(dream)[_ROWS]


def reduce_to_particles_by_data(
    lp: torch.Tensor,
    site: Any,
    data_plate: str,
    rank: int,
    num_particles: int,
    batch_size: int,
    total: torch.Tensor | None,
    row_scale: float = 1.0,
    enum_rank: int = 0,
) -> torch.Tensor:
    full = rank + enum_rank
    if not torch.is_tensor(lp) or lp.dim() == 0:
        lp = torch.as_tensor(lp).reshape((1,) * full)
    if lp.dim() < full:
        lp = lp.reshape((1,) * (full - lp.dim()) + lp.shape)
    particle_index = lp.dim() - rank
    enum_dims = tuple(range(particle_index - enum_rank, particle_index))
    data_dim = next(
        (f.dim for f in site["cond_indep_stack"] if f.name == data_plate and plate_rows(f, lp.shape) == batch_size),
        None,
    )
    if data_dim is None:
        # a global site, or one in a plate that subsamples the rows: its log-probability (scaled by the subsample
        # plate) is shared equally by the datapoints of the batch, so that their sum is Pyro's total
        other = tuple(d for d in range(lp.dim()) if d != particle_index and d not in enum_dims)
        lp = (lp.sum(other) if other else lp).unsqueeze(-1) / (batch_size * row_scale)
    else:
        keep = (*enum_dims, particle_index, lp.dim() + data_dim)
        other = tuple(d for d in range(lp.dim()) if d not in keep)
        if other:
            lp = lp.sum(other)
    lp = lp.expand(*lp.shape[:-2], num_particles, batch_size)
    return lp if total is None else total + lp


def flatten_rows(values: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    """Flatten each tensor to ``(batch_size, -1)`` and concatenate them along the last dimension."""
    flat = [v.reshape(batch_size, -1) for v in values]
    return flat[0] if len(flat) == 1 else torch.cat(flat, -1)

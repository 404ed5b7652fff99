"""Inspection of a program pair: one trace of the first batch tells ppdgm how to run the programs.

:func:`inspect_pair` runs the model and the guide once on a batch (no gradients) and returns the
:class:`Structure` (sites, plates, players) and the observed sites' messages; it raises
:class:`ConventionError` naming the site, column or program when the pair cannot be run. The helpers
here — calling a program as ``SVI.step`` would, running it with errors that name program, side and
batch — are shared with :mod:`ppdgm.programs.pair`, which runs the two sides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.trace_struct import Trace

from ppdgm.programs.batch import Batch, Data, Key
from ppdgm.programs.batch import batch_size as rows_of
from ppdgm.programs.sites import (
    ConventionError,
    GuideSites,
    Structure,
    auxiliary,
    check_signature,
    classify_guide_sites,
    enumerated,
    local_params,
    param_names,
    run_program,
    sample_sites,
)


@dataclass
class Inspected:
    """What :func:`inspect_pair` found: the structure, the primary observed site and every observed site's message."""

    structure: Structure
    obs_site: str
    observed_sites: dict[str, Any]
    #: parameters outside Pyro's param store (``PyroModule`` under ``module_local_params``): unconstrained leaves
    local_params: dict[str, torch.Tensor]


def inspect_pair(
    model: Callable,
    guide: Callable | None,
    x: Data,
    *,
    model_args: tuple[tuple, dict],
    guide_args: tuple[tuple, dict] | None,
    obs_site: str | None = None,
    data_plate: str | None = None,
    partial_guide: bool = False,
) -> Inspected:
    """Trace the pair once on batch ``x`` (called with ``model_args``/``guide_args``) and check it can be run.

    Raises :class:`ConventionError` naming the offending site, column or program when it cannot.
    """
    batch_size = rows_of(x)
    check_signature("model", model, *model_args, x)
    if guide is not None and guide_args is not None:
        check_signature("guide", guide, *guide_args, x)
    with poutine.block(), torch.no_grad():
        model_trace = run_program(model, model_args, "model", "data side (inspection)", x)
        model_sites = sample_sites(model_trace)
        observed = tuple(n for n, s in model_sites.items() if s["is_observed"] and not auxiliary(s))
        if not observed:
            raise ConventionError(
                "the model has no observed site; declare the data as `pyro.sample(name, dist, obs=data)`"
            )
        _check_data_shapes(model_sites, observed)
        columns = _observed_columns(x, model_sites, observed)
        primary = _primary_site(observed, columns, obs_site)
        plate = _find_data_plate(primary, model_sites[primary], batch_size, data_plate)
        guide_trace, replayed = None, model_trace
        if guide is not None and guide_args is not None:
            guide_trace = run_program(guide, guide_args, "guide", "data side (inspection)", x)
            proposed = sample_sites(guide_trace)
            # before the model runs on them: a latent of the wrong shape fails (or broadcasts) inside the model
            _check_latent_shapes(model_sites, proposed, [n for n, s in proposed.items() if not enumerated(s)])
            replayed = run_program(
                poutine.replay(model, trace=guide_trace), model_args, "model", "data side (inspection)", x
            )
    guide_sites = sample_sites(guide_trace) if guide_trace is not None else {}
    latents, model_enumerated = _latents(model_sites, guide_sites, observed, guide_trace is not None, partial_guide)
    _refuse_sequential({**model_sites, **guide_sites})
    auxiliary_sites = tuple(n for n, s in guide_sites.items() if n not in model_sites and not s["is_observed"])
    _refuse_enumerated_auxiliary(guide_sites, auxiliary_sites)
    scored = latents + auxiliary_sites
    kinds = classify_guide_sites(scored, guide_sites) if guide_sites else GuideSites(scored, (), (), ())
    model_params, guide_params, shared_params = _players(replayed, guide_trace)
    structure = Structure(
        latent_sites=latents,
        reparam_sites=kinds.reparam,
        nonreparam_sites=kinds.nonreparam,
        data_plate=plate,
        max_plate_nesting=_max_plate_nesting(replayed, guide_trace),
        model_param_names=model_params,
        guide_param_names=guide_params,
        observed_sites=observed,
        observed_columns=tuple(columns.items()),
        guide_enumerated=kinds.enumerated,
        model_enumerated=model_enumerated,
        auxiliary_sites=auxiliary_sites,
        shared_param_names=shared_params,
        global_sites=_global_sites(
            {**sample_sites(replayed), **guide_sites}, latents + auxiliary_sites + observed, plate, batch_size
        ),
    )
    local = {**local_params(replayed), **local_params(guide_trace)}
    return Inspected(structure, primary, {name: model_sites[name] for name in observed}, local)


def _latents(
    model_sites: dict[str, Any], guide_sites: dict[str, Any], observed: tuple[str, ...], has_guide: bool, partial: bool
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The latents the guide proposes and those the model enumerates; refuses a guide that misses one."""
    model_latents = tuple(n for n, s in model_sites.items() if not s["is_observed"])
    model_enumerated = tuple(
        n for n in model_latents if n not in guide_sites and enumerated(model_sites[n]) == "parallel"
    )
    if not has_guide:  # a guide-less method that sums nothing out refuses these (Method.check_programs)
        return tuple(n for n in model_latents if n not in model_enumerated), model_enumerated
    latents = tuple(n for n in model_latents if n not in model_enumerated)
    missing = [n for n in latents if n not in guide_sites]
    if partial:
        latents = tuple(n for n in latents if n in guide_sites)
        if not latents:
            raise ConventionError(
                f"the guide samples none of the model's latent sites {missing}; name its sites as the model's"
            )
    elif missing:
        masked = [n for n in missing if n.endswith("_unobserved") and f"{n[:-11]}_observed" in observed]
        if masked:
            raise ConventionError(
                f"the model's site(s) {[n[:-11] for n in masked]} are partially observed (obs_mask): the "
                f"guide must propose the missing values at sample site(s) {masked}"
            )
        raise ConventionError(
            f"the guide has no sample site for the model's latent site(s) {missing}; every latent of the model "
            "must be sampled by the guide (or enumerated in the model: infer={'enumerate': 'parallel'})"
        )
    sampled_observed = [n for n in observed if n in guide_sites]
    if sampled_observed:
        raise ConventionError(f"the guide must not sample the observed site(s) {sampled_observed}")
    return latents, model_enumerated


def _check_data_shapes(model_sites: dict[str, Any], observed: tuple[str, ...]) -> None:
    """Each observed value must have its distribution's event shape (data of the wrong width fail here, named)."""
    for name in observed:
        site = model_sites[name]
        fn, value = site["fn"], site["value"]
        event = tuple(getattr(fn, "event_shape", ()))
        if not torch.is_tensor(value) or not event:
            continue
        if tuple(value.shape[value.dim() - len(event) :]) != event:
            raise ConventionError(
                f"the data observed at site {name!r} have shape {tuple(value.shape)}, but its distribution's rows "
                f"have shape {event}: are the data as wide as the model expects?"
            )


def _check_latent_shapes(model_sites: dict[str, Any], guide_sites: dict[str, Any], names: list[str]) -> None:
    """Each guide latent must have the shape of the model's own draw (from its prior) at that site."""
    for name in names:
        if name not in guide_sites or name not in model_sites or model_sites[name]["is_observed"]:
            continue
        prior, proposed = tuple(model_sites[name]["value"].shape), tuple(guide_sites[name]["value"].shape)
        if prior != proposed:
            raise ConventionError(
                f"the guide samples latent site {name!r} with shape {proposed}, but the model draws it with shape "
                f"{prior}; the guide must propose values of the model's shape"
            )


def _global_sites(sites: dict[str, Any], names: tuple[str, ...], data_plate: str, rows: int) -> tuple[str, ...]:
    """The sites whose log-densities are not one per row of the batch: outside the data plate, or inside a plate that
    subsamples the batch's rows (``pyro.plate("data", len(data), subsample_size=b)`` over the whole data)."""

    def per_row(site: Any) -> bool:
        return any(
            f.name == data_plate and plate_rows(f, site["fn"].batch_shape) == rows for f in site["cond_indep_stack"]
        )

    return tuple(n for n in names if n in sites and not per_row(sites[n]))


def plate_rows(frame: Any, shape: torch.Size) -> int:
    """A plate's size; for ``pyro.plate(name)`` without one (Pyro's size -1, "as the values have"), the extent of
    ``shape`` (a site's batch shape or log-density) at the plate's dim."""
    if frame.size != -1:
        return frame.size
    return shape[frame.dim] if frame.dim is not None and len(shape) >= -frame.dim else -1


def _refuse_enumerated_auxiliary(guide_sites: dict[str, Any], auxiliary_sites: tuple[str, ...]) -> None:
    marked = [n for n in auxiliary_sites if enumerated(guide_sites[n])]
    if marked:
        raise ConventionError(
            f"the guide enumerates its auxiliary site(s) {marked} (sites with no model site); ppdgm sums out "
            "enumerated latents of the model only"
        )


def _refuse_sequential(sites: dict[str, Any]) -> None:
    sequential = [n for n, s in sites.items() if enumerated(s) == "sequential"]
    if sequential:
        raise ConventionError(
            f"site(s) {sequential} ask for sequential enumeration; ppdgm sums out only parallel enumeration "
            "(infer={'enumerate': 'parallel'})"
        )


def _max_plate_nesting(*traces: Trace | None) -> int:
    frames = [
        f
        for trace in traces
        if trace is not None
        for site in sample_sites(trace).values()
        for f in site["cond_indep_stack"]
        if f.dim is not None
    ]
    return max([-f.dim for f in frames], default=0)


def _players(model_trace: Trace, guide_trace: Trace | None) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The parameters the model uses (θ), those only the guide uses (φ), and those both use (with θ: a method that
    steps the players separately refuses them, see :meth:`ppdgm.methods.base.Method.check_programs`)."""
    model_params = param_names(model_trace)
    guide_params = param_names(guide_trace)
    shared = tuple(n for n in model_params if n in set(guide_params))
    return model_params, tuple(n for n in guide_params if n not in shared), shared


def _observed_columns(x: Data, sites: dict[str, dict], observed: tuple[str, ...]) -> dict[Key, str]:
    """Tie each data column to the observed site whose value is that column (or a view of it)."""
    items = [(key, c) for key, c in (x.items() if isinstance(x, Batch) else [(0, x)]) if c is not None]
    columns: dict[Key, str] = {}
    for name in observed:
        value = sites[name]["value"]
        if not torch.is_tensor(value):
            continue
        # the column itself, a view of all of it, or a copy of its values (x.contiguous(), x.float()) in row-major
        # order: generated values then go back into the column by a reshape; a slice or a transform is no column
        same = [(k, c) for k, c in items if _same_values(value, c)]
        key = next((k for k, c in same if value.data_ptr() == c.data_ptr()), same[0][0] if same else None)
        if key is not None and key not in columns:
            columns[key] = name
    order = [key for key, _ in items]  # the batch's column order: the first observed column is the primary site's
    return {key: columns[key] for key in sorted(columns, key=order.index)}


def _same_values(value: torch.Tensor, column: torch.Tensor) -> bool:
    if value.numel() != column.numel() or value.device != column.device:
        return False
    return bool(torch.equal(value.reshape(-1).to(column.dtype), column.reshape(-1)))


def _primary_site(observed: tuple[str, ...], columns: dict[Key, str], given: str | None) -> str:
    if given is not None:
        if given not in observed:
            raise ConventionError(
                f"obs_site={given!r} is not an observed site of the model (its observed sites: {list(observed)})"
            )
        return given
    if len(observed) == 1:
        return observed[0]
    if columns:
        return next(iter(columns.values()))
    # no site observes a column as it is (a time step of a sequence, a derived value): the data side scores every
    # observed site and needs none primary; the model side refuses when it needs the tie (ProgramPair.observed_of)
    return observed[0]


def _find_data_plate(obs_name: str, obs_site: Any, batch_size: int, data_plate: str | None) -> str:
    frames = [f for f in obs_site["cond_indep_stack"] if f.vectorized]
    names = [f.name for f in frames]
    if data_plate is not None:
        if data_plate not in names:
            raise ConventionError(
                f"the observed site {obs_name!r} is not inside the plate {data_plate!r} (its plates: {names})"
            )
        return data_plate
    if "data" in names:
        return "data"
    shape = obs_site["fn"].batch_shape
    candidates = [f.name for f in frames if plate_rows(f, shape) == batch_size or f.full_size == batch_size]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConventionError(
            f"the observed site {obs_name!r} is in no plate of the batch size {batch_size} (its plates: "
            f"{names}); wrap it in `with pyro.plate('data', x.shape[0]):`"
        )
    raise ConventionError(
        f"several plates of size {batch_size} hold the observed site {obs_name!r}: {candidates}; "
        "name the data plate 'data' or pass data_plate=..."
    )

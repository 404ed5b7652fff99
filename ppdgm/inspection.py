"""Inspection of a program pair: one trace of the first batch tells ppdgm how to run the programs.

:func:`inspect_pair` runs the model and the guide once on a batch (no gradients) and returns the
:class:`Structure` (sites, plates, players) and the observed sites' messages; it raises
:class:`ConventionError` naming the site, column or program when the pair cannot be run. The helpers
here — calling a program as ``SVI.step`` would, running it with errors that name program, side and
batch — are shared with :mod:`ppdgm.programs`, which runs the two sides.
"""

from __future__ import annotations

import functools
import inspect as _inspect
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import _bound_partial, _context_wrap
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample

from ppdgm.batch import Batch, Data, Key
from ppdgm.batch import batch_size as rows_of
from ppdgm.errors import PpdgmError
from ppdgm.handlers import unconstrained_params


class ConventionError(PpdgmError, ValueError):
    """A model or guide cannot be run as ppdgm needs (see :mod:`ppdgm.programs`); the message says why."""


class ProgramError(ConventionError):
    """A user's model or guide raised: says which program, on which side, with which arguments (the error chained)."""


def signature(fn: Callable) -> _inspect.Signature | None:
    """The signature of the user's function, seen through Pyro's handlers applied as calls or decorators.

    ``config_enumerate(fn)``, ``poutine.scale(fn, 0.5)``, ``poutine.block(fn)``... wrap ``fn`` in partials whose
    bound arguments are the handler and ``fn`` itself, taken off here as Pyro's own
    :func:`~pyro.poutine.messenger.unwrap` does; arguments bound by a user's ``functools.partial`` are not the
    program's to receive (unlike ``unwrap``, such a partial is not mistaken for a handler).
    """
    bound = 0
    while True:
        if isinstance(fn, _bound_partial):  # Messenger.__call__'s wrapper (its partial's own fields are flattened)
            fn = fn.func
        elif isinstance(fn, functools.partial) and fn.func is _context_wrap and len(fn.args) >= 2:
            bound += len(fn.args) - 2  # partial(_context_wrap, handler, fn, *bound)
            fn = fn.args[1]
        elif isinstance(fn, functools.partial):
            bound += len(fn.args)
            fn = fn.func
        else:
            break
    if isinstance(fn, torch.nn.Module):
        fn = fn.forward
    try:
        sig = _inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if bound:
        params = list(sig.parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        drop = {p.name for p in positional[:bound]}
        sig = sig.replace(parameters=[p for p in params if p.name not in drop])
    return sig


def accepts(fn: Callable, keyword: str, named: bool = False) -> bool:
    """Whether ``fn`` can be called with ``keyword=...`` (with ``named``: only if it names that parameter)."""
    sig = signature(fn)
    if sig is None:
        return not named
    params = sig.parameters
    if keyword in params and params[keyword].kind is not _inspect.Parameter.POSITIONAL_ONLY:
        return True
    return not named and any(p.kind is _inspect.Parameter.VAR_KEYWORD for p in params.values())


def arguments(x: Data | None, batch_size: int, with_batch_size: bool) -> tuple[tuple, dict[str, Any]]:
    """The arguments ``SVI.step`` would pass for batch ``x`` (plus ``batch_size=`` for a program that names it)."""
    args: tuple
    kwargs: dict[str, Any]
    if isinstance(x, Batch):
        args, kwargs = x.args, dict(x.kwargs)
    else:
        args, kwargs = (x,), {}
    if with_batch_size:
        kwargs["batch_size"] = batch_size
    return args, kwargs


def check_signature(name: str, fn: Callable, args: tuple, kwargs: dict, x: Data) -> None:
    """Refuse a program that cannot be called with the batch's arguments, naming both."""
    sig = signature(fn)
    if sig is None:
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as err:
        raise ConventionError(
            f"the {name} cannot take the batch {describe(x)}: {err}. Its signature is {name}{sig}; ppdgm calls the "
            "programs as SVI.step does: a tensor as the first positional argument, a tuple of columns "
            "positionally, a dict of columns by keyword"
        ) from None


def is_reparameterized(site: dict) -> bool:
    return bool(getattr(site["fn"], "has_rsample", False))


def sample_sites(trace: Trace) -> dict[str, Any]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site) and not site.get("is_auxiliary", False)
    }


def auxiliary(site: dict) -> bool:
    """A ``pyro.factor`` or ``pyro.deterministic`` site: observed in form, but no data."""
    infer = site.get("infer") or {}
    return bool(infer.get("is_auxiliary") or infer.get("_deterministic"))


def enumerated(site: dict) -> str | None:
    return (site.get("infer") or {}).get("enumerate")


@dataclass(frozen=True)
class Structure:
    """What :meth:`ProgramPair.inspect` learnt about a program pair from one trace."""

    latent_sites: tuple[str, ...]
    reparam_sites: tuple[str, ...]
    nonreparam_sites: tuple[str, ...]
    data_plate: str
    max_plate_nesting: int
    model_param_names: tuple[str, ...]
    guide_param_names: tuple[str, ...]
    #: every observed site of the model
    observed_sites: tuple[str, ...] = ()
    #: the data column each observed site reads (column key → site); other columns are inputs
    observed_columns: tuple[tuple[Key, str], ...] = ()
    #: guide sites summed out exactly (``infer={"enumerate": "parallel"}``): part of ``latent_sites``
    guide_enumerated: tuple[str, ...] = ()
    #: model latents summed out in the model (enumerated, no guide site): not in ``latent_sites``
    model_enumerated: tuple[str, ...] = ()
    #: guide sample sites with no model site (an AutoGuide's ``*_unconstrained`` or ``_AutoDiagonalNormal_latent``,
    #: any auxiliary variable): part of log q, as in Pyro's estimators, but never handed to the model
    auxiliary_sites: tuple[str, ...] = ()
    #: parameters both programs use (one ``pyro.module`` in both): part of ``model_param_names``, not of the guide's
    shared_param_names: tuple[str, ...] = ()
    #: latent and auxiliary sites outside the data plate (a global mu, an AutoDiagonalNormal's one latent vector):
    #: their weights belong to the whole batch, not to one datapoint
    global_sites: tuple[str, ...] = ()

    @property
    def scored_sites(self) -> tuple[str, ...]:
        """The guide sites whose log-densities make log q(z | x): the latents and the auxiliary sites."""
        return self.latent_sites + self.auxiliary_sites

    @property
    def particle_dim(self) -> int:
        return -(self.max_plate_nesting + 1)

    @property
    def enumerated(self) -> tuple[str, ...]:
        return self.guide_enumerated + self.model_enumerated


@dataclass(frozen=True)
class GuideSites:
    """The guide sites one data-side run scores, by kind: every sample site of the guide's trace (latents and
    auxiliary sites), those summed out by enumeration, and of the others those with and without a reparameterised
    sampler."""

    scored: tuple[str, ...]
    enumerated: tuple[str, ...]
    reparam: tuple[str, ...]
    nonreparam: tuple[str, ...]

    @classmethod
    def of_structure(cls, structure: Structure) -> GuideSites:
        return cls(
            structure.scored_sites, structure.guide_enumerated, structure.reparam_sites, structure.nonreparam_sites
        )


def classify_guide_sites(names: tuple[str, ...], sites: dict[str, Any]) -> GuideSites:
    """Guide sites ``names`` (of ``sites``) by kind: enumerated, else with or without a reparameterised sampler."""
    enumerated_ = tuple(n for n in names if enumerated(sites[n]) == "parallel")
    reparam = tuple(n for n in names if n not in enumerated_ and is_reparameterized(sites[n]))
    return GuideSites(names, enumerated_, reparam, tuple(n for n in names if n not in enumerated_ and n not in reparam))


def guide_sites(guide_trace: Trace, structure: Structure, known: GuideSites) -> GuideSites:
    """The guide sites of this trace: ``known`` (the inspection batch's) when they are the same names, else classified
    from the trace (a sequence model has a site per time step of the batch's longest sequence).

    A site that the inspection batch did not have is accepted only where the method's checks at inspection still hold:
    inside the data plate, and of a kind (enumerated, reparameterised or not) that the inspection batch had.
    """
    sites = {n: s for n, s in sample_sites(guide_trace).items() if not s["is_observed"]}
    if len(sites) == len(known.scored) and all(n in sites for n in known.scored):
        return known
    found = classify_guide_sites(tuple(sites), sites)
    kinds = (
        ("enumerated", found.enumerated, known.enumerated),
        ("sampled without a reparameterised path", found.nonreparam, known.nonreparam),
        ("reparameterised", found.reparam, known.reparam),
    )
    seen = set(known.scored)
    for name, site in sites.items():
        if name in seen:
            continue
        label, _, before = next(k for k in kinds if name in k[1])
        kind = None if before else label  # a kind the first batch had passed the method's checks
        plates = [f.name for f in site["cond_indep_stack"] if f.vectorized]
        if kind is not None or structure.data_plate not in plates:
            why = f"is {kind}, a kind" if kind is not None else "lies outside the data plate, where"
            raise ConventionError(
                f"the guide's site {name!r} appears in this batch but not in the first one (which had "
                f"{list(known.scored)[:6]}...), and {why} the checks made on the first batch did not see; make the "
                "first batch show every kind of site (e.g. its longest sequence), or give the site the same kind in "
                "every batch"
            )
    return found


def describe(x: Data | None) -> str:
    """``"(arg 0: (100, 64) float32, ...)"``: what a program was called with."""
    if x is None:
        return "(None)"
    return (x if isinstance(x, Batch) else Batch((x,))).describe()


def run_program(fn: Callable, arguments: tuple[tuple, dict], program: str, side: str, x: Data | None) -> Trace:
    """Run ``fn`` under a trace handler and return its trace (without the copy ``get_trace`` makes).

    A user program's exception is re-raised as :class:`ProgramError` naming the program, the side and
    the batch it was given, with the original chained.
    """
    args, kwargs = arguments
    handler = poutine.trace(fn)
    try:
        handler(*args, **kwargs)
    except ConventionError:
        raise
    except Exception as err:
        extra = f", batch_size={kwargs['batch_size']}" if "batch_size" in kwargs else ""
        text = str(err).split("Trace Shapes:")[0].strip()  # Pyro appends a shape table
        first = text.splitlines()[0] if text else ""
        site = _failing_site(err)
        if site is not None:
            at = f" at site {site['name']!r}"
            fn = site.get("fn")
            if (site.get("infer") or {}).get("enumerate") and not getattr(fn, "has_enumerate_support", True):
                raise ConventionError(
                    f"the {program}'s site {site['name']!r} is marked for enumeration, but its distribution "
                    f"{type(fn).__name__} has no finite support to enumerate; enumerate discrete sites only (remove "
                    "the annotation, or config_enumerate's default marks only discrete sites)"
                ) from None
        else:
            at = ""
        raise ProgramError(
            f"the {program} raised {type(err).__name__}{at} on the {side}, called with the batch {describe(x)}{extra}"
            f": {first or '(no message)'}"
        ) from err
    return handler.msngr.trace


def _failing_site(err: BaseException) -> dict | None:
    """The Pyro sample site whose handling raised ``err`` (a handler's ``msg`` on the traceback), if any."""
    site = None
    for frame, _ in traceback.walk_tb(err.__traceback__):
        msg = frame.f_locals.get("msg")
        if isinstance(msg, dict) and msg.get("type") == "sample" and isinstance(msg.get("name"), str):
            site = msg
    return site


def param_names(trace: Trace | None) -> tuple[str, ...]:
    if trace is None:
        return ()
    return tuple(name for name, site in trace.nodes.items() if site["type"] == "param")


def _local_params(trace: Trace | None) -> dict[str, torch.Tensor]:
    """The unconstrained leaves of param sites that Pyro's param store does not hold (module-local parameters)."""
    if trace is None:
        return {}
    store = unconstrained_params()
    local = {}
    for name, site in trace.nodes.items():
        if site["type"] == "param" and name not in store:
            leaf = getattr(site["value"], "unconstrained", None)
            local[name] = leaf() if callable(leaf) else site["value"]
    return local


def column_label(key: Key) -> str:
    return f"at position {key}" if isinstance(key, int) else repr(key)


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
    local = {**_local_params(replayed), **_local_params(guide_trace)}
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
    steps the players separately refuses them, see :meth:`ppdgm.method.Method.check_programs`)."""
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

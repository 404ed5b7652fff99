"""Calling a Pyro program as ``SVI.step`` would, and what its trace says: sites, plates, players.

The :class:`Structure` of a pair is what :func:`~ppdgm.programs.inspection.inspect_pair` learns from one trace;
the errors here name the program, the side and the batch.
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

from ppdgm.errors import PpdgmError
from ppdgm.programs.batch import Batch, Data, Key
from ppdgm.programs.handlers import unconstrained_params, value_of


class ConventionError(PpdgmError, ValueError):
    """A model or guide cannot be run as ppdgm needs (see :mod:`ppdgm.programs.pair`); the message says why."""


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
            site_fn = site.get("fn")
            if (site.get("infer") or {}).get("enumerate") and not getattr(site_fn, "has_enumerate_support", True):
                raise ConventionError(
                    f"the {program}'s site {site['name']!r} is marked for enumeration, but its distribution "
                    f"{type(site_fn).__name__} has no finite support to enumerate; enumerate discrete sites only "
                    "(remove the annotation, or config_enumerate's default marks only discrete sites)"
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


def local_params(trace: Trace | None) -> dict[str, torch.Tensor]:
    """The unconstrained leaves of param sites that Pyro's param store does not hold (module-local parameters)."""
    if trace is None:
        return {}
    store = unconstrained_params()
    local: dict[str, torch.Tensor] = {}
    for name, site in trace.nodes.items():
        if site["type"] == "param" and name not in store:
            leaf = getattr(site["value"], "unconstrained", None)
            local[name] = leaf() if callable(leaf) else value_of(site)
    return local


def column_label(key: Key) -> str:
    return f"at position {key}" if isinstance(key, int) else repr(key)

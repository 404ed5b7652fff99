"""The two sides a pair runs on: data side (guide, then replayed model), and auxiliary pairs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
from pyro.poutine.trace_struct import Trace

from ppdgm.errors import UsageError
from ppdgm.programs.combine import log_mean_exp, mean
from ppdgm.programs.handlers import value_of
from ppdgm.programs.sites import (
    Structure,
    guide_sites,
)

if TYPE_CHECKING:  # a pair runs its sides; a side only names the pair's type
    from ppdgm.programs.base import PairBase

PARTICLE_PLATE = "_ppdgm_particles"


class DataSide:
    """One vectorised run of the pair on the data side, scored per particle and per datapoint.

    ``log_p`` is log p(x, z) and ``log_q`` is log q(z | x), both of shape ``(K, B)``.
    ``log_q_nonreparam`` is the part of ``log_q`` from latents sampled without a reparameterised
    path (their gradients need a score-function term), ``None`` when there are none. The guide's
    scores are computed on first use, so a phase that needs only ``log_p`` does not pay for them.

    With enumerated sites, model-enumerated latents are summed out of ``log_p``
    (log Σ_e p(x, e, z)), and guide-enumerated ones leave dimensions left of the particles in
    ``log_p`` and ``log_q``; :attr:`log_weights` sums them out (an unbiased weight per particle:
    Σ_e p(x, e, z_e) / q(z_e | x, e)) and :attr:`expected_log_weights` takes their exact expectation
    under q (the ELBO's integrand, as Pyro's ``TraceEnum_ELBO``).
    """

    def __init__(
        self, programs: PairBase, guide_trace: Trace, model_trace: Trace, num_particles: int, batch_size: int
    ) -> None:
        self.programs, self.guide_trace, self.model_trace = programs, guide_trace, model_trace
        self.structure = programs.structure
        #: the guide sites this run scores (those of the inspection batch, or of this batch's own trace)
        self.sites = guide_sites(guide_trace, self.structure, programs.known_guide_sites)
        self._shape = (num_particles, batch_size)
        self._n_enum, model_dims = _enum_dims(guide_trace, model_trace, self.structure)
        #: enumeration dims kept in log_p / log_q: those of guide-enumerated sites (model ones are summed out)
        self._kept_enum = self._n_enum if self.sites.enumerated else 0
        log_p = programs.log_prob(model_trace, num_particles, batch_size, enum_rank=self._n_enum)
        if model_dims:
            log_p = torch.logsumexp(log_p, model_dims, keepdim=True)
        self.log_p = log_p if self._kept_enum else log_p.reshape(self._shape)

    def _log_q_of(self, sites: tuple[str, ...]) -> torch.Tensor:
        return self.programs.log_prob(self.guide_trace, *self._shape, sites=sites, enum_rank=self._kept_enum)

    @cached_property
    def log_q(self) -> torch.Tensor:
        """log q of every guide site (latents and auxiliary sites), as Pyro's estimators score the guide."""
        return self._log_q_of(self.sites.scored)

    @cached_property
    def log_q_nonreparam(self) -> torch.Tensor | None:
        sites = self.sites
        if not sites.nonreparam:
            return None
        if len(sites.nonreparam) == len(sites.scored):
            return self.log_q
        return self._log_q_of(sites.nonreparam)

    @property
    def log_weights(self) -> torch.Tensor:
        """Importance log weights log p(x, z) - log q(z | x), shape ``(K, B)``."""
        enumerated = self.sites.enumerated
        if not enumerated:
            return self.log_p - self.log_q
        continuous = tuple(n for n in self.sites.scored if n not in enumerated)
        log_w = self.log_p - self._log_q_of(continuous) if continuous else self.log_p
        return torch.logsumexp(log_w, tuple(range(self._kept_enum))).expand(self._shape)

    @property
    def expected_log_weights(self) -> torch.Tensor:
        """E over the guide-enumerated sites of log p - log q, exactly; shape ``(K, B)``."""
        log_w = self.log_p - self.log_q
        if not self.sites.enumerated:
            return log_w
        q_enum = self._log_q_of(self.sites.enumerated).exp()
        return (q_enum * log_w).sum(tuple(range(self._kept_enum))).expand(self._shape)

    def elbo(self) -> torch.Tensor:
        """The ELBO estimate per datapoint, shape ``(B,)``: the mean over particles of :attr:`expected_log_weights`."""
        return mean(self.expected_log_weights)

    def iwae_bound(self) -> torch.Tensor:
        """The IWAE bound L_K per datapoint, shape ``(B,)``: log-mean-exp of :attr:`log_weights` over particles.

        A pair with global sites (:attr:`Structure.global_sites`) has one weight per particle for the whole batch,
        as in Pyro's ``RenyiELBO``: the batch's bound, log-mean-exp of the summed weights, shared equally by its rows.
        """
        log_w = self.log_weights
        if self.structure.global_sites:
            rows = log_w.shape[-1]
            return (log_mean_exp(log_w.sum(-1), 0) / rows).expand(rows)
        return log_mean_exp(log_w, 0)

    def latents(self) -> dict[str, torch.Tensor]:
        return {name: value_of(self.guide_trace.nodes[name]) for name in self.structure.latent_sites}


@dataclass(frozen=True)
class Auxiliary:
    r"""A further Pyro model/guide pair whose ELBO joins a data-side method's objective with a weight.

    Pyro's semi-supervised VAE adds a classification loss this way (``model_classify``/``guide_classify``, an empty
    guide and ``y`` observed through the guide's classifier on labelled batches). Called with each batch's arguments
    as the main pair is, the pair adds :math:`-w\,\mathrm{ELBO}_{aux}(x)` to the loss (per datapoint, as the main
    loss is): with ``w = 1`` ppdgm's loss times the rows is Pyro's ``Trace_ELBO`` loss of the main pair plus that of
    this pair. Its guide's sites must be reparameterised (no score-function term); its model's unobserved sites must
    be its guide's.
    """

    model: Callable
    guide: Callable
    weight: float = 1.0

    @classmethod
    def of(cls, given: Any) -> Auxiliary:
        """From an ``Auxiliary``, a ``(model, guide)`` or a ``(model, guide, weight)`` tuple."""
        if isinstance(given, Auxiliary):
            pair = given
        elif isinstance(given, tuple | list) and len(given) in (2, 3):
            pair = cls(*given)
        else:
            raise UsageError(
                f"auxiliary must be a list of (model, guide) or (model, guide, weight) pairs, got {given!r}"
            )
        if not callable(pair.model) or not callable(pair.guide):
            raise UsageError(f"an auxiliary pair's model and guide must be Pyro programs, got {given!r}")
        weight = pair.weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < float("inf"):
            raise UsageError(f"an auxiliary pair's weight must be a non-negative number, got {weight!r}")
        return pair


def _enum_dims(guide_trace: Trace, model_trace: Trace, structure: Structure) -> tuple[int, tuple[int, ...]]:
    """How many enumeration dims the traces use, and (counted from the left of ``(E..., K, B)``) the model's.

    Pyro's enumeration allocates dims right to left, starting just left of the particle dim.
    """
    if not structure.enumerated:
        return 0, ()
    rank = structure.max_plate_nesting + 1
    # from the traces, not the first batch's site names: a batch may hold other sites (a DMM's)
    guide_dims = _enumerate_dims(guide_trace)
    model_dims = _enumerate_dims(model_trace, skip=guide_trace.nodes)
    dims = guide_dims | model_dims
    if not dims:
        return 0, ()
    n_enum = max(-d for d in dims) - rank
    return n_enum, tuple(sorted(n_enum + rank + d for d in model_dims))


def _enumerate_dims(trace: Trace, skip: Any = ()) -> set[int]:
    """The dims Pyro's enumeration gave the sample sites of ``trace`` (those not in ``skip``)."""
    return {
        (site["infer"] or {})["_enumerate_dim"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and name not in skip and (site.get("infer") or {}).get("_enumerate_dim") is not None
    }

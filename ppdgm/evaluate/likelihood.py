r"""Evaluation of trained pairs: importance-sampled log-likelihood, ELBO and IWAE bounds, exact log p(x).

For a datapoint x and S guide samples :math:`z_s \sim q(z \mid x)`,

.. math::

    \widehat{\log p(x)} = \log \frac{1}{S} \sum_{s=1}^S \frac{p(x, z_s)}{q(z_s \mid x)},

which is the IWAE bound at k = S (a stochastic lower bound that tightens as S grows). Particles are
processed in chunks whose size keeps memory bounded; chunks combine by a running log-sum-exp.
Each function returns an :class:`Estimate` with per-datapoint values, their mean and standard error.

A ``pyro.factor`` in the model that is not zero on the evaluated rows is refused, naming the site: with it, each
of these numbers bounds log p(x) plus the factor, not log p(x) (a semi-supervised model's α·log q(y | x) on labelled
rows is a training objective's term). Pyro's ELBOs include factors; these functions measure likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import pyro
import pyro.poutine as poutine
import torch

from ppdgm.compile.function import RecordedFunction
from ppdgm.compile.state import generator_state, set_generator_state
from ppdgm.data.streams import is_stream, materialize
from ppdgm.errors import UsageError, positive_int
from ppdgm.programs.batch import Data, as_rows, first_column
from ppdgm.programs.batch import batch_size as rows_of
from ppdgm.programs.handlers import distribution_of
from ppdgm.programs.pair import ProgramPair
from ppdgm.programs.rows import site_score
from ppdgm.programs.sites import auxiliary, sample_sites


@dataclass
class Estimate:
    """Per-datapoint values with their mean and the standard error of the mean."""

    values: torch.Tensor

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    @property
    def stderr(self) -> float:
        n = self.values.numel()
        return float(self.values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.stderr:.3f}"


def _programs(model: Callable, guide: Callable, x: Data, obs_site: str | None, data_plate: str | None) -> ProgramPair:
    return ProgramPair.inspected(model, guide, x, obs_site=obs_site, data_plate=data_plate)


def _chunks(total: int, size: int) -> Iterator[int]:
    while total > 0:
        yield min(size, total)
        total -= size


def _particle_chunk(num_samples: int, batch: int, x_numel: int, max_elements: int) -> int:
    return max(1, min(num_samples, max_elements // max(1, batch * x_numel)))


@torch.no_grad()
def _batched(
    model: Callable,
    guide: Callable | None,
    data: Data,
    per_batch: Callable[[ProgramPair, Data], torch.Tensor],
    batch_size: int,
    obs_site: str | None,
    data_plate: str | None,
    arguments: Callable | None = None,
) -> Estimate:
    data = materialize(data) if is_stream(data) else as_rows(data)
    batch_size = positive_int("batch_size", batch_size)
    if rows_of(data) == 0:
        raise UsageError("no data to evaluate on (the split is empty)")
    programs = ProgramPair(model, guide, obs_site=obs_site, data_plate=data_plate, arguments=arguments)
    programs.inspect_data(data[:batch_size], [data])  # fit's checks: data outside the support has no score
    out = []
    with pyro.validation_enabled(False):
        for x in data.split(batch_size):
            refuse_factors(programs, x, guide is not None)
            out.append(per_batch(programs, x))
    return Estimate(torch.cat(out).detach().cpu())


def refuse_factors(programs: ProgramPair, x: Data, guided: bool = True) -> None:
    """Refuse rows on which a ``pyro.factor`` of the model adds to its log-density (at one draw of the latents from
    the guide, or from the model when ``guided`` is false): a likelihood of such rows is not log p(x). The draw is
    taken off to the side: the estimate that follows draws what it would have drawn without the check."""
    before = generator_state()
    trace = programs.data_side(x, 1).model_trace if guided else programs.model_trace(x)
    set_generator_state(before)
    for name, site in sample_sites(trace).items():
        if not auxiliary(site) or site["infer"].get("_deterministic"):
            continue
        term = site_score(name, site).detach()
        if bool((term != 0).any()):
            size = float(term.abs().max())
            raise UsageError(
                f"the model's pyro.factor site {name!r} adds to its log-density on these rows (up to {size:.4g} a "
                "row), so the result would bound log p(x) plus that term, not log p(x). Evaluate on rows where the "
                "factor is zero (a SemiSupervisedVAE's classification term applies to rows marked labelled only: "
                "give the rows with the labelled column False), or build the model without the factor"
            )


def log_likelihood(
    model: Callable,
    guide: Callable,
    data: Data,
    num_samples: int = 5000,
    *,
    batch_size: int = 100,
    max_elements: int = 1 << 24,
    obs_site: str | None = None,
    data_plate: str | None = None,
    arguments: Callable | None = None,
    compile: bool = True,
    vectorize_particles: bool = True,
) -> Estimate:
    """Importance-sampled log p(x) per datapoint with ``num_samples`` guide samples each.

    Memory stays bounded: at most about ``max_elements`` numbers of x-sized tensors at once. With ``compile`` each
    chunk of particles runs from a recording (:class:`~ppdgm.compile.function.RecordedFunction`; eager where it cannot).
    ``vectorize_particles=False`` runs the programs once per particle, as Pyro's ELBOs do by default: for programs
    that do not broadcast over a leading particle dimension (Pyro's cvae indexes with a mask of the batch's shape).
    ``arguments`` builds the programs' arguments from each batch, as in :func:`ppdgm.fit`.
    """
    num_samples, max_elements = positive_int("num_samples", num_samples), positive_int("max_elements", max_elements)

    chunk_lse: RecordedFunction | None = None

    def per_batch(programs: ProgramPair, x: Data) -> torch.Tensor:
        nonlocal chunk_lse
        if programs.structure.global_sites:
            raise UsageError(
                f"log p(x) per datapoint is not defined for a pair with global site(s) "
                f"{list(programs.structure.global_sites)} (outside the data plate): their importance weights belong "
                "to the whole data set, not to one row. Use evaluate.elbo (exact in sum) or evaluate.iwae_bound (the "
                "batch's bound)"
            )
        if chunk_lse is None:  # one recording per chunk shape, replayed for every batch (ppdgm.compile.step)

            def lse(x: Data, k: int) -> torch.Tensor:
                return torch.logsumexp(programs.data_side(x, k).log_weights, 0)

            chunk_lse = RecordedFunction(lse, "the importance-sampled log-likelihood", enabled=compile)
        chunk = 1
        if vectorize_particles:
            chunk = _particle_chunk(num_samples, rows_of(x), first_column(x)[1][0].numel(), max_elements)
        running: torch.Tensor | None = None
        for k in _chunks(num_samples, chunk):
            lse_k = chunk_lse(x, k)
            running = lse_k if running is None else torch.logaddexp(running, lse_k)
        return cast(torch.Tensor, running) - math.log(num_samples)  # num_samples >= 1: one chunk at least

    return _batched(model, guide, data, per_batch, batch_size, obs_site, data_plate, arguments)


def iwae_bound(
    model: Callable,
    guide: Callable,
    data: Data,
    k: int,
    *,
    num_repeats: int = 1,
    batch_size: int = 100,
    obs_site: str | None = None,
    data_plate: str | None = None,
    arguments: Callable | None = None,
) -> Estimate:
    """The IWAE bound L_k per datapoint, each averaged over ``num_repeats`` independent draws."""
    k, num_repeats = positive_int("k", k), positive_int("num_repeats", num_repeats)

    def per_batch(programs: ProgramPair, x: Data) -> torch.Tensor:
        return torch.stack([programs.data_side(x, k).iwae_bound() for _ in range(num_repeats)]).mean(0)

    return _batched(model, guide, data, per_batch, batch_size, obs_site, data_plate, arguments)


def elbo(
    model: Callable,
    guide: Callable,
    data: Data,
    num_samples: int = 1,
    *,
    batch_size: int = 100,
    obs_site: str | None = None,
    data_plate: str | None = None,
    arguments: Callable | None = None,
) -> Estimate:
    """The ELBO per datapoint, a Monte Carlo average over ``num_samples`` guide samples."""
    num_samples = positive_int("num_samples", num_samples)

    def per_batch(programs: ProgramPair, x: Data) -> torch.Tensor:
        return programs.data_side(x, num_samples).elbo()

    return _batched(model, guide, data, per_batch, batch_size, obs_site, data_plate, arguments)


@torch.no_grad()
def exact_log_likelihood(
    model: Callable,
    data: Data,
    *,
    batch_size: int = 100,
    max_elements: int = 1 << 24,
    max_latents: int = 20,
    obs_site: str | None = None,
    data_plate: str | None = None,
) -> Estimate:
    """Exact log p(x) per datapoint.

    Uses ``model.log_marginal(x)`` when the model offers one (e.g. the linear-Gaussian model);
    otherwise sums p(x, h) over every configuration of the latents, which must all be Bernoulli
    (possibly ``.to_event``) inside the data plate, at most ``max_latents`` binary units in all.
    Configurations run as the particle dimension of the model, in chunks bounded by ``max_elements``.
    """
    log_marginal = getattr(model, "log_marginal", None)
    if log_marginal is not None:
        return Estimate(log_marginal(data).detach().cpu())

    def per_batch(programs: ProgramPair, x: Data) -> torch.Tensor:
        return _enumerate(programs, x, max_elements, max_latents)

    return _batched(model, None, data, per_batch, batch_size, obs_site, data_plate)


def _enumerate(programs: ProgramPair, x: Data, max_elements: int, max_latents: int) -> torch.Tensor:
    structure = programs.structure
    batch_size = rows_of(x)
    args, kwargs = programs.model_arguments(x, batch_size)
    trace = poutine.trace(programs.model).get_trace(*args, **kwargs)
    shapes: dict[str, tuple[int, ...]] = {}
    for name in structure.latent_sites:
        site = trace.nodes[name]
        base = site["fn"]
        while hasattr(base, "base_dist"):
            base = base.base_dist
        if not isinstance(base, torch.distributions.Bernoulli):
            raise UsageError(f"exact enumeration needs Bernoulli latents; site {name!r} is {type(base).__name__}")
        if [f.name for f in site["cond_indep_stack"] if f.vectorized] != [structure.data_plate]:
            raise UsageError(f"exact enumeration needs latents in the data plate only; site {name!r} is not")
        shapes[name] = tuple(site["fn"].event_shape)
    sizes = [math.prod(shape) for shape in shapes.values()]
    total = sum(sizes)
    if total > max_latents:
        raise UsageError(f"{total} binary latents make 2^{total} configurations; at most {max_latents} are enumerated")
    if total == 0:
        return programs.log_prob(trace, 1, batch_size)[0]
    observed = programs.observed_of(x)
    configs = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=observed.dtype, device=observed.device)] * total)
    configs = configs.reshape(-1, total)
    chunk = 2 ** max(0, int(math.log2(max(1, max_elements // max(1, batch_size * programs.observed_of(x)[0].numel())))))
    running: torch.Tensor | None = None
    for block in configs.split(max(2, chunk)):
        c = block.shape[0]
        values = {
            name: part.reshape(c, 1, *shape).expand(c, batch_size, *shape)
            for (name, shape), part in zip(shapes.items(), block.split(sizes, -1))
        }
        conditioned = poutine.condition(programs.vectorised(programs.model, c), data=values)
        tr = poutine.trace(conditioned).get_trace(*args, **kwargs)
        lse = torch.logsumexp(programs.log_prob(tr, c, batch_size), 0)
        running = lse if running is None else torch.logaddexp(running, lse)
    return cast(torch.Tensor, running)  # one block at least


@torch.no_grad()
def active_units(
    model: Callable,
    guide: Callable,
    data: Data,
    *,
    threshold: float = 1e-2,
    num_samples: int = 10,
    batch_size: int = 200,
    obs_site: str | None = None,
    data_plate: str | None = None,
) -> int:
    """Number of active latent units (Burda et al. 2016): unit u is active when Cov_x(E_q[u | x]) > threshold.

    E_q[u | x] is the mean of the guide's distribution at each latent site (exact for a one-layer
    guide; for later layers of a hierarchical guide it is averaged over ``num_samples`` draws of the
    layers below). All latent units of all sites are counted.
    """
    data = as_rows(data)
    if rows_of(data) < 2:
        raise UsageError("active units need at least two datapoints")
    programs = _programs(model, guide, data[:batch_size], obs_site, data_plate)
    means = []
    with pyro.validation_enabled(False):
        for x in data.split(batch_size):
            side = programs.data_side(x, num_samples)
            per_site = [
                distribution_of(side.guide_trace.nodes[name]).mean.reshape(num_samples, rows_of(x), -1).mean(0)
                for name in programs.structure.latent_sites
            ]
            means.append(torch.cat(per_site, -1))
    return int((torch.cat(means).var(0) > threshold).sum())


def mixture_quality(
    samples: torch.Tensor, centres: torch.Tensor, std: float, *, k: float = 3.0, min_count: int = 1
) -> dict[str, float]:
    """Mode coverage and sample quality for a mixture of isotropic Gaussians with known modes.

    A sample is *high quality* when it lies within ``k`` standard deviations of its nearest mode;
    a mode is *covered* when at least ``min_count`` high-quality samples have it as nearest mode.
    Returns ``{"mode_coverage": covered modes, "high_quality_fraction": fraction of samples}``.
    """
    if samples.dim() != 2 or samples.shape[-1] != centres.shape[-1]:
        raise UsageError(f"samples must be (n, {centres.shape[-1]}), got {tuple(samples.shape)}")
    distance, nearest = torch.cdist(samples.double(), centres.double()).min(-1)
    good = distance <= k * std
    counts = torch.bincount(nearest[good], minlength=len(centres))
    return {"mode_coverage": float((counts >= min_count).sum()), "high_quality_fraction": float(good.double().mean())}


@torch.no_grad()
def mixture_kl(
    samples: torch.Tensor, points: torch.Tensor, log_density: Callable[[torch.Tensor], torch.Tensor], bandwidth: float
) -> float:
    """KL(true || model) estimated from model samples: the mean over ``points`` (draws of the true
    distribution) of log p(x) - log q(x), with q a Gaussian kernel density of the samples (``bandwidth``).

    Missing a mode makes q tiny where p has mass, so the estimate grows: it measures mode covering,
    the direction VAEs optimise. A perfect sampler still scores the kernel's smoothing bias (compare
    against samples of the true distribution).
    """
    samples, points = samples.double().reshape(samples.shape[0], -1), points.double().reshape(points.shape[0], -1)
    dim = samples.shape[-1]
    log_norm = -0.5 * dim * math.log(2 * math.pi * bandwidth**2) - math.log(samples.shape[0])
    log_q = torch.cat(
        [
            torch.logsumexp(-0.5 * torch.cdist(chunk, samples).pow(2) / bandwidth**2, -1) + log_norm
            for chunk in points.split(1024)
        ]
    )
    return float((log_density(points) - log_q).mean())

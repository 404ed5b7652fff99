r"""Evaluation of trained pairs: importance-sampled log-likelihood, ELBO and IWAE bounds, exact log p(x).

For a datapoint x and S guide samples :math:`z_s \sim q(z \mid x)`,

.. math::

    \widehat{\log p(x)} = \log \frac{1}{S} \sum_{s=1}^S \frac{p(x, z_s)}{q(z_s \mid x)},

which is the IWAE bound at k = S (a stochastic lower bound that tightens as S grows). Particles are
processed in chunks whose size keeps memory bounded; chunks combine by a running log-sum-exp.
Each function returns an :class:`Estimate` with per-datapoint values, their mean and standard error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch

from ppdgm.batch import Data, as_rows, first_column
from ppdgm.batch import batch_size as rows_of
from ppdgm.compiled import RecordedFunction
from ppdgm.errors import UsageError
from ppdgm.handlers import distribution_of
from ppdgm.method import positive_int
from ppdgm.programs import ProgramPair
from ppdgm.streams import is_stream, materialize


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
    programs = ProgramPair(model, guide, obs_site=obs_site, data_plate=data_plate)
    programs.inspect(x)
    return programs


def _chunks(total: int, size: int) -> Iterator[int]:
    while total > 0:
        yield min(size, total)
        total -= size


def _particle_chunk(num_samples: int, batch: int, x_numel: int, max_elements: int) -> int:
    return max(1, min(num_samples, max_elements // max(1, batch * x_numel)))


@torch.no_grad()
def _batched(
    model: Callable,
    guide: Callable,
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
            out.append(per_batch(programs, x))
    return Estimate(torch.cat(out).detach().cpu())


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
    chunk of particles runs from a recording (:class:`~ppdgm.compiled.RecordedFunction`; eager where it cannot).
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
        if chunk_lse is None:  # one recording per chunk shape, replayed for every batch (ppdgm.compiled)

            def lse(x: Data, k: int) -> torch.Tensor:
                return torch.logsumexp(programs.data_side(x, k).log_weights, 0)

            chunk_lse = RecordedFunction(lse, "the importance-sampled log-likelihood", enabled=compile)
        chunk = 1
        if vectorize_particles:
            chunk = _particle_chunk(num_samples, rows_of(x), first_column(x)[1][0].numel(), max_elements)
        running = None
        for k in _chunks(num_samples, chunk):
            lse_k = chunk_lse(x, k)
            running = lse_k if running is None else torch.logaddexp(running, lse_k)
        return running - math.log(num_samples)

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
    running = None
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
    return running


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


def train_classifier(
    x: torch.Tensor, labels: torch.Tensor, hidden: int = 128, epochs: int = 60, seed: int = 0
) -> torch.nn.Sequential:
    """A small MLP classifier ``x -> class logits`` trained on labelled data (full-batch Adam), for sample scores."""
    gen = torch.Generator().manual_seed(seed)
    num_classes = int(labels.max()) + 1
    net = torch.nn.Sequential(
        torch.nn.Linear(x[0].numel(), hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    rows = x.reshape(x.shape[0], -1)
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(net(rows), labels.long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def train_judge(
    x: torch.Tensor,
    labels: torch.Tensor,
    image_shape: Sequence[int],
    epochs: int = 4,
    batch_size: int = 128,
    seed: int = 0,
    channels: tuple[int, int] = (32, 64),
) -> torch.nn.Sequential:
    """A small convolutional classifier of images, ``flat rows -> class logits``, to judge samples by (inception
    score, FID features, the accuracy of class-conditional samples): two 3x3 convolutions with ReLU, each followed
    by 2x2 max-pooling, then a 128-unit hidden layer (the FID features) and the class logits. Adam (lr 1e-3),
    minibatches of ``batch_size`` in a seeded order. On MNIST, 6 epochs (the comparisons' setting) reached 99.06%
    of the test digits on 2 CPU threads, 3 epochs 98.56% (docs/paper.md); ``ppdgm.compare`` prints the accuracy of
    the judge it uses beside every table."""
    shape = tuple(int(s) for s in image_shape)
    shape = (1, *shape) if len(shape) == 2 else shape  # grey images: one channel
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.get_rng_state()
    torch.manual_seed(seed)  # the layers' initial weights; the caller's stream is given back below
    side = [shape[1] // 4, shape[2] // 4]
    net = torch.nn.Sequential(
        torch.nn.Unflatten(1, shape),
        torch.nn.Conv2d(shape[0], channels[0], 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(channels[0], channels[1], 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(channels[1] * side[0] * side[1], 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, int(labels.max()) + 1),
    )
    torch.set_rng_state(torch_state)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rows = x.reshape(x.shape[0], -1).float()
    targets = labels.long()
    net.train()
    for _ in range(epochs):
        for index in torch.randperm(len(rows), generator=gen).split(batch_size):
            loss = torch.nn.functional.cross_entropy(net(rows[index]), targets[index])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def accuracy(classifier: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, chunk: int = 2000) -> float:
    """The share of rows ``x`` that ``classifier`` assigns to their class."""
    rows = x.reshape(x.shape[0], -1).float()
    right = sum(
        int((classifier(part).argmax(-1) == y).sum()) for part, y in zip(rows.split(chunk), labels.split(chunk))
    )
    return right / len(rows)


@torch.no_grad()
def classifier_scores(classifier: torch.nn.Module, samples: torch.Tensor, min_share: float = 0.02) -> dict[str, float]:
    """Sample quality and class coverage judged by a classifier of the data (Salimans et al. 2016's score).

    ``inception_score`` = exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over the samples: high when
    each sample is classified confidently and the classes are balanced (at most the number of classes).
    ``class_coverage``: the number of classes that receive at least ``min_share`` of the samples (argmax).
    """
    probs = torch.softmax(classifier(samples.reshape(samples.shape[0], -1)).double(), -1)
    marginal = probs.mean(0, keepdim=True)
    kl = (probs * (probs.clamp_min(1e-30).log() - marginal.clamp_min(1e-30).log())).sum(-1)
    share = torch.bincount(probs.argmax(-1), minlength=probs.shape[-1]).double() / probs.shape[0]
    return {"inception_score": float(kl.mean().exp()), "class_coverage": float((share >= min_share).sum())}


@torch.no_grad()
def label_accuracy(guide: Callable, rows: Data, chunk: int = 1000) -> float:
    """How often a semi-supervised guide's proposal for a partially observed label picks the true class.

    ``rows`` are ``(x, y, labelled)`` columns (one-hot ``y``, a boolean mask, as in
    :class:`~ppdgm.models.SemiSupervisedVAE`); every row is shown to the guide as unlabelled, and its
    ``<label>_unobserved`` site's most probable class is compared with ``y``.
    """
    from ppdgm.batch import Batch

    if not isinstance(rows, Batch):
        raise UsageError("label_accuracy needs data columns (x, y, labelled)")
    masks = [k for k, c in rows.items() if c is not None and c.dtype == torch.bool]
    if len(masks) != 1:
        raise UsageError(f"label_accuracy needs one boolean mask column, found {len(masks)} in {rows.describe()}")
    correct, total = 0.0, 0
    for part in rows.split(chunk):
        hidden = part.replace({masks[0]: torch.zeros_like(part.get(masks[0]))})
        with poutine.trace() as tracer, poutine.block(hide_types=["param"]):
            guide(*hidden.args, **hidden.kwargs)
        sites = [s for n, s in tracer.trace.nodes.items() if n.endswith("_unobserved") and s["type"] == "sample"]
        if not sites:
            raise UsageError("the guide has no '<site>_unobserved' sample site (a partially observed label)")
        probs = sites[0]["fn"].probs  # type: ignore[attr-defined]
        labels = next(c for _, c in part.items() if c is not None and c.shape[1:] == probs.shape[-1:])
        correct += float((probs.argmax(-1) == labels.argmax(-1)).double().sum())
        total += len(part)
    return correct / total

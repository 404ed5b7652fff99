r"""The adversarial primitives of the unified view: discriminator programs and their reversal.

Hu, Yang, Salakhutdinov & Xing (2018), "On Unifying Deep Generative Models" (arXiv:1706.00550)
write a GAN in the variational language of VAEs. An indicator :math:`y` says where ``x`` comes
from (1 = the data, 0 = the generator), so that

.. math::

    p_\theta(x \mid y) = \begin{cases} p_{g_\theta}(x) & y = 0 \ \text{(the model side)} \\
                                     p_{data}(x) & y = 1 \ \text{(the data side)} \end{cases}

and the discriminator is a distribution :math:`q_\psi(y \mid x)`. The discriminator learns by
maximising :math:`\mathbb{E}_{p_\theta(x \mid y) p(y)}[\log q_\psi(y \mid x)]` — a sleep phase whose
"latent" y is known — and the generator learns by maximising the same expectation of the
**reversed** discriminator :math:`q^r_\psi(y \mid x) = q_\psi(1 - y \mid x)` (the non-saturating
GAN loss). Here both are the same Pyro program: :class:`Reverse` is an effect handler that flips
the observed y, so :math:`q^r` is :math:`q` run under the handler, never a second loss written
by hand.

A *discriminator program* is any Pyro program ``discriminator(inputs, y=None)`` with a sample site
``"y"`` (``site=`` renames it) of one value per row of ``inputs`` — typically
``pyro.sample("y", dist.Bernoulli(logits=net(inputs)), obs=y)`` inside a data plate;
:class:`~ppdgm.guides.discriminators.Discriminator` turns any ``nn.Module`` into one. What it
discriminates depends on the method: x (GAN), z (AAE) or (x, z) pairs (ALI/BiGAN); pairs and
several latent sites are passed as one tensor, flattened per row and concatenated (see
:func:`ppdgm.programs.rows.flatten_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, cast

import pyro.poutine as poutine
import torch
from pyro.poutine.trace_struct import Trace

from ppdgm.errors import UsageError, positive_int
from ppdgm.guides.discriminators import Discriminator, MLPDiscriminator
from ppdgm.methods.base import Method
from ppdgm.programs.batch import Data
from ppdgm.programs.handlers import Reverse, StoreParams, distribution_of, value_of
from ppdgm.programs.pair import ProgramPair
from ppdgm.programs.rows import dream_rows, flatten_rows
from ppdgm.programs.sites import ConventionError, accepts


def reverse(fn: Callable, site: str = "y") -> Callable:
    """``fn`` under :class:`Reverse`: the reversed discriminator program."""
    return Reverse(site)(fn)


class Adversary:
    """A discriminator program with the scoring the adversarial methods need.

    Args:
        program: a Pyro program ``program(inputs, y=None)`` with a sample site ``site`` holding one value
            per row of ``inputs`` (a Bernoulli over y for a discriminator, whose logits a critic reads).
        site: the name of the indicator site.
    """

    def __init__(self, program: Callable, site: str = "y") -> None:
        if not callable(program):
            raise UsageError(f"a discriminator must be a Pyro program or an nn.Module, got {type(program).__name__}")
        if not accepts(program, "y"):
            raise ConventionError(
                "a discriminator program must accept the keyword argument 'y' (the observed indicator); "
                "wrap a network with ppdgm.guides.Discriminator(net)"
            )
        self.program, self.site = program, site
        self.param_names: tuple[str, ...] = ()
        self._labels: dict[tuple, torch.Tensor] = {}

    def inspect(self, inputs: torch.Tensor) -> tuple[str, ...]:
        """Run the program once on ``inputs`` (registering its parameters); check its output shape."""
        batch_size = inputs.shape[0]
        try:
            with torch.no_grad():
                trace = poutine.trace(self.program).get_trace(inputs, y=self.labels(batch_size, 1, inputs))
        except ValueError as err:
            if "Shape mismatch" not in str(err):
                raise
            raise ConventionError(
                f"the discriminator's output does not match the batch of {batch_size} inputs: it must give one "
                f"logit per row, shape ({batch_size},) or ({batch_size}, 1). Pyro reports: {str(err).splitlines()[0]}"
            ) from None
        site = trace.nodes.get(self.site)
        if site is None or site["type"] != "sample":
            sites = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
            raise ConventionError(
                f"the discriminator program has no sample site {self.site!r} (its sample sites: {sites}); "
                f"score the indicator as pyro.sample({self.site!r}, dist.Bernoulli(logits=...), obs=y)"
            )
        if not site["is_observed"]:
            raise ConventionError(
                f"the discriminator must observe its indicator: pyro.sample({self.site!r}, ..., obs=y)"
            )
        shape = tuple(distribution_of(site).log_prob(site["value"]).shape)
        if shape != (batch_size,):
            raise ConventionError(
                f"the discriminator scores a batch of {batch_size} inputs with log-probabilities of shape {shape}; "
                f"it must give one per row, shape ({batch_size},) — e.g. squeeze the network's last dimension "
                "and put the site in a plate over the batch"
            )
        self.param_names = tuple(n for n, s in trace.nodes.items() if s["type"] == "param")
        return self.param_names

    def labels(self, batch_size: int, value: int, like: torch.Tensor) -> torch.Tensor:
        """A cached ``(batch_size,)`` tensor filled with ``value`` (1 = real, 0 = generated)."""
        key = (batch_size, value, like.device, like.dtype)
        y = self._labels.get(key)
        if y is None:
            y = self._labels[key] = torch.full((batch_size,), float(value), device=like.device, dtype=like.dtype)
        return y

    def trace(self, inputs: torch.Tensor, y: torch.Tensor, reversed: bool = False) -> Trace:
        """Trace the program on ``inputs`` with observed ``y`` (under :class:`Reverse` when ``reversed``)."""
        handler = poutine.trace(reverse(self._run, self.site) if reversed else self._run)
        handler(inputs, y=y)
        return handler.msngr.trace

    def _run(self, inputs: torch.Tensor, y: torch.Tensor) -> Any:
        """The program with its known parameters answered straight from the param store."""
        with StoreParams():
            return self.program(inputs, y=y)

    def log_prob(self, inputs: torch.Tensor, y: torch.Tensor, reversed: bool = False) -> torch.Tensor:
        """log q(y | inputs), or log q^r(y | inputs) = log q(1 - y | inputs) when ``reversed``; shape ``(B,)``."""
        site = self.trace(inputs, y, reversed).nodes[self.site]
        return distribution_of(site).log_prob(site["value"])

    def score(self, real: torch.Tensor, *fakes: torch.Tensor, reversed: bool = False) -> torch.Tensor:
        """Mean over all rows of log q(y | inputs) (or q^r): ``real`` rows with y = 1, ``fakes`` rows with y = 0.

        The sides run as one batch: one call of the program per phase.
        """
        inputs = torch.cat([real, *fakes])
        n_fake = inputs.shape[0] - real.shape[0]
        y = torch.cat([self.labels(real.shape[0], 1, real), self.labels(n_fake, 0, real)])
        return self.log_prob(inputs, y, reversed).mean()

    def fooled(self, fake: torch.Tensor) -> torch.Tensor:
        """Mean of log q^r(y = 0 | fake) = log D(fake) over generated rows: what a generator maximises."""
        return self.log_prob(fake, self.labels(fake.shape[0], 0, fake), reversed=True).mean()

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit of y = 1 (a WGAN critic's value), shape ``(B,)``."""
        site = self.trace(inputs, self.labels(inputs.shape[0], 1, inputs)).nodes[self.site]
        fn = site["fn"]
        while not hasattr(fn, "logits") and hasattr(fn, "base_dist"):
            fn = fn.base_dist
        if not hasattr(fn, "logits"):
            raise ConventionError(
                f"a critic is read off the discriminator's logits, but its site {self.site!r} has a "
                f"{type(site['fn']).__name__}; use dist.Bernoulli(logits=...)"
            )
        return fn.logits


def default_discriminator(in_dim: int, hidden: Sequence[int] | None = None, name: str = "discriminator") -> Callable:
    """An MLP discriminator program for inputs of ``in_dim`` features (LeakyReLU(0.2) between layers)."""

    if hidden is None:
        hidden = (256, 256) if in_dim > 16 else (128, 128)
    return MLPDiscriminator(in_dim, hidden, name=name)


def as_discriminator(discriminator: Any, name: str = "discriminator") -> Callable:
    """A discriminator program from a program or from a bare ``nn.Module`` (wrapped as a Bernoulli on its logit)."""

    if isinstance(discriminator, torch.nn.Module) and not accepts(discriminator, "y"):
        return Discriminator(discriminator, name=name)
    return discriminator


class AdversarialMethod(Method):
    """Base of the methods with a discriminator player ``"discriminator"`` (ψ).

    Subclasses say what the discriminator sees (:meth:`discriminator_inputs`) and run their phases in
    :meth:`step`; the base builds the discriminator (the user's, or a default MLP sized from what it
    sees), registers its player, and keeps the phase schedule: the discriminator updates on every
    step (batch), the generating players on every ``discriminator_steps``-th.

    Args:
        discriminator: a discriminator program, an ``nn.Module`` network (wrapped), or ``None`` for the
            default: the model's ``make_discriminator()`` when it has one and the discriminator sees x
            (e.g. the DCGAN generator's convolutional partner), else an MLP sized from its inputs.
        discriminator_steps: discriminator updates per generator update.
        discriminator_hidden: hidden sizes of the default discriminator.
        generator_output: what the discriminator sees of a generated x: ``"sample"`` (the x site's value;
            it must be reparameterised, e.g. a Delta or a Normal) or ``"mean"`` (the mean of the x
            site's distribution, for likelihood models such as Bernoulli decoders).
    """

    players: ClassVar[tuple[str, ...]] = ("model", "guide", "discriminator")
    requires_guide: ClassVar[bool] = False
    discriminates: ClassVar[str] = "x"
    #: gan and iwgan take data columns: a conditional model's inputs, seen by the discriminator beside x
    accepts_columns: ClassVar[bool] = False
    needs_generator_gradient: ClassVar[bool] = True
    needs_reparameterised_guide: ClassVar[bool] = False
    needs_likelihood: ClassVar[bool] = False

    def __init__(
        self,
        discriminator: Any = None,
        discriminator_steps: int = 1,
        discriminator_hidden: Sequence[int] | None = None,
        generator_output: str = "sample",
    ) -> None:
        self.generator_output = generator_output_option(generator_output)
        self.user_discriminator = None if discriminator is None else as_discriminator(discriminator)
        self.discriminator: Callable | None = self.user_discriminator
        self.discriminator_steps = positive_int("discriminator_steps", discriminator_steps)
        self.discriminator_hidden = None if discriminator_hidden is None else tuple(discriminator_hidden)
        self.adversary: Adversary | None = None
        self.step_count = 0

    def options(self) -> dict:
        return {
            "discriminator_steps": self.discriminator_steps,
            "generator_output": self.generator_output,
            "discriminator": "default" if self.user_discriminator is None else type(self.user_discriminator).__name__,
        }

    # ------------------------------------------------------------------ setup
    def discriminator_inputs(self, programs: ProgramPair, dream: Trace, x: Data) -> torch.Tensor:
        """What the discriminator sees of a model-side ``dream`` (default: the generated x, beside its inputs)."""
        return self.view(programs, generated_x(programs, dream, self.generator_output), dream_rows(dream))

    @staticmethod
    def view(programs: ProgramPair, values: torch.Tensor, rows: Data) -> torch.Tensor:
        """What the discriminator sees of ``values`` (real or generated x for ``rows``): the values, and beside
        them, for a conditional model, the inputs of those rows (cast to float; give labels one-hot)."""
        inputs = programs.inputs_of(rows)
        if not inputs:
            return values
        n = values.shape[0]
        return flatten_rows([values, *(i.to(values.dtype) for i in inputs)], n)

    def setup(self, programs: ProgramPair) -> None:
        if self.needs_reparameterised_guide:
            check_reparameterised_guide(programs, self.name)
        if self.needs_likelihood:
            check_likelihood(programs, self.name)
        example = programs.example[:4]
        with poutine.block():
            dream = programs.model_side(example)
        if self.needs_generator_gradient:
            check_generator(programs, dream, self.generator_output, self.name)
        with torch.no_grad():
            inputs = self.discriminator_inputs(programs, dream, example)
        self.discriminator = self.user_discriminator
        make = getattr(programs.model, "make_discriminator", None)
        if self.discriminator is None and self.discriminates == "x" and callable(make):
            self.discriminator = make()
        if self.discriminator is None:
            in_dim = inputs.reshape(inputs.shape[0], -1).shape[-1]
            self.discriminator = default_discriminator(in_dim, self.discriminator_hidden)
        self.adversary = Adversary(self.discriminator)
        names = self.adversary.inspect(inputs.detach())
        overlap = sorted(set(names) & set(programs.structure.model_param_names + programs.structure.guide_param_names))
        if overlap:
            raise ConventionError(f"the discriminator shares parameters {overlap} with the model or guide; rename them")

    def extra_players(self) -> dict[str, tuple[str, ...]]:
        return {"discriminator": self.adversary.param_names if self.adversary is not None else ()}

    def modules(self) -> list[torch.nn.Module]:
        return [self.discriminator] if isinstance(self.discriminator, torch.nn.Module) else []

    @torch.no_grad()
    def gan_value(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        """V(D, G) per datapoint: log D(x) + log(1 - D(x_g)), one generated x_g per datapoint."""
        fake = self.view(programs, generated_x(programs, programs.model_side(x), self.generator_output), x)
        real = self.view(programs, programs.observed_of(x), x)
        n = len(x)
        adversary = cast(Adversary, self.adversary)  # made by setup, before any step
        return adversary.log_prob(real, adversary.labels(n, 1, real)) + adversary.log_prob(
            fake, adversary.labels(n, 0, real)
        )

    # ------------------------------------------------------------------ schedule
    def generator_turn(self) -> bool:
        """Count a step; whether the generating players update on it: the 1st, then every `discriminator_steps`-th."""
        self.step_count += 1
        return (self.step_count - 1) % self.discriminator_steps == 0

    def compiled_key(self) -> bool:
        """Whether the next step is a generator turn: its recording differs from the discriminator-only one."""
        return self.step_count % self.discriminator_steps == 0

    def after_replay(self) -> None:
        self.step_count += 1  # what generator_turn counts in an eager step

    def remember(self, **metrics: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keep the generating players' metrics of their last update, reported on the steps they skip."""
        self._generator_metrics = {k: v.detach() for k, v in metrics.items()}
        return self._generator_metrics

    def recall(self) -> dict[str, torch.Tensor]:
        return self._generator_metrics

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "generator_metrics": getattr(self, "_generator_metrics", {})}

    def load_state_dict(self, state: Mapping) -> None:
        self.step_count = int(state.get("step_count", 0))
        self._generator_metrics = dict(state.get("generator_metrics", {}))


def generator_output_option(value: str) -> str:
    """Check the ``generator_output`` option: ``"sample"`` or ``"mean"``."""
    if value not in ("sample", "mean"):
        raise UsageError(f"generator_output must be 'sample' or 'mean', got {value!r}")
    return value


def generated_x(programs: ProgramPair, dream: Trace, output: str = "sample") -> torch.Tensor:
    """The generated x of a model-side trace (its value, or its distribution's mean), with its graph."""
    site = dream.nodes[programs.primary_site]
    x = value_of(site) if output == "sample" else distribution_of(site).mean
    return programs.as_column(x, programs.observed_of(dream_rows(dream)))


def check_generator(programs: ProgramPair, dream: Trace, output: str, method: str) -> None:
    """Refuse a generator whose x the method cannot differentiate in θ, saying what to change."""
    site = dream.nodes[programs.primary_site]
    fn = site["fn"]
    if output == "sample" and not getattr(fn, "has_rsample", False):
        kind = type(getattr(fn, "base_dist", fn)).__name__
        raise ConventionError(
            f"method {method!r} back-propagates through the generated {programs.obs_site!r}, but the model samples it "
            f"from a {kind}, which has no reparameterised sampler; make the x site a deterministic function of z "
            "(dist.Delta) or a Normal with a small fixed scale, or pass generator_output='mean' to show the "
            "discriminator the likelihood's mean"
        )
    x = generated_x(programs, dream, output)
    if programs.structure.model_param_names and not x.requires_grad:
        raise ConventionError(
            f"method {method!r} needs the generated {programs.obs_site!r} to depend differentiably on the model's "
            "parameters, but it carries no gradient (was it detached or computed under torch.no_grad?)"
        )


def check_reparameterised_guide(programs: ProgramPair, method: str) -> None:
    """Refuse a guide whose latents have no reparameterised sampler (the method differentiates through them)."""
    bad = programs.structure.nonreparam_sites
    if bad:
        raise ConventionError(
            f"method {method!r} back-propagates through the guide's samples, but latent site(s) {list(bad)} have no "
            "reparameterised sampler (e.g. Bernoulli); use continuous reparameterisable latents"
        )


def check_likelihood(programs: ProgramPair, method: str) -> None:
    """Refuse a model whose likelihood of the data is not finite (e.g. a Delta x site) for a method that needs it."""
    example = programs.example[:8]
    with poutine.block(), torch.no_grad():
        side = programs.data_side(example, 1)
        log_lik = programs.log_prob(side.model_trace, 1, len(example), sites=(programs.primary_site,))
    if not bool(torch.isfinite(log_lik).all()):
        fn = side.model_trace.nodes[programs.primary_site]["fn"]
        kind = type(getattr(fn, "base_dist", fn)).__name__
        raise ConventionError(
            f"method {method!r} needs the likelihood log p(x | z) of the data, but the model's {kind} x site gives "
            "-inf or NaN on the data; give the x site a density (a Normal with noise_scale=..., or a Bernoulli decoder)"
        )


def gaussian_mmd2(
    x: torch.Tensor,
    y: torch.Tensor,
    bandwidths: Sequence[float] | None = None,
    scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
) -> torch.Tensor:
    r"""Biased (V-statistic) squared MMD between the rows of ``x`` and ``y`` under a sum of Gaussian kernels.

    :math:`k(a, b) = \sum_\sigma \exp(-\lVert a - b \rVert^2 / (2 \sigma^2))`. With ``bandwidths=None``
    the σ are ``scales`` times the median distance between the rows of ``x`` (a constant: no gradient).
    """
    x, y = x.reshape(len(x), -1), y.reshape(y.shape[0], -1)
    both = torch.cat([x, y])
    sq = torch.cdist(both, both).pow(2)
    if bandwidths is None:
        with torch.no_grad():  # the median distance between distinct rows (static indices: no host sync)
            rows, cols = torch.triu_indices(len(x), len(x), 1, device=sq.device)
            median = sq[rows, cols].median().sqrt().clamp_min(1e-6)
        sigmas = median * torch.tensor(scales, dtype=sq.dtype, device=sq.device)
    else:
        sigmas = torch.tensor(list(bandwidths), dtype=sq.dtype, device=sq.device)
    kernel = torch.exp(-sq.unsqueeze(0) / (2 * sigmas.pow(2)).reshape(-1, 1, 1)).sum(0)
    n = len(x)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()

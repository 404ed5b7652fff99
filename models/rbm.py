r"""Restricted Boltzmann machine: a binary energy model with its Gibbs conditionals and partition function.

An RBM is undirected: :math:`p(v, h) = e^{-E(v, h)} / Z` with
:math:`E(v, h) = -b^\top v - c^\top h - v^\top W h`, and :math:`Z` a sum over every configuration.
That makes it unlike ppdgm's other models: there is no ancestral sampler (samples come from Gibbs
chains) and no normalised log-probability without Z. So it offers an explicit energy-model
interface instead — :meth:`RBM.free_energy`, the conditionals :meth:`RBM.hidden_probs` /
:meth:`RBM.visible_probs`, :meth:`RBM.gibbs` — and its partition function exactly by enumeration
(:meth:`RBM.log_partition`, small RBMs) or by annealed importance sampling
(:meth:`RBM.ais_log_partition`, Salakhutdinov & Murray 2008).

It is still callable as a Pyro program ``rbm(x=None, batch_size=None)`` so that ``ppdgm.fit`` and
the comparison runner can drive it: its x site scores :math:`-F(v)`, the *unnormalised*
log-probability, and "samples" by a Gibbs chain. Train it with ``method="cd"`` or ``"pcd"``.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn
from torch.nn import functional as F

from ppdgm.errors import UsageError


class RBM(nn.Module):
    """Binary-binary RBM with ``n_visible`` and ``n_hidden`` units.

    Args:
        n_visible, n_hidden: layer sizes.
        sample_steps: Gibbs steps used when the Pyro program is asked to generate.
        name: the name its parameters are registered under with ``pyro.module``.
    """

    def __init__(
        self, n_visible: int, n_hidden: int, sample_steps: int = 1000, name: str = "rbm", seed: int = 0
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(0.01 * torch.randn(n_visible, n_hidden, generator=gen))
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))
        self.n_visible, self.n_hidden, self.sample_steps, self.name = n_visible, n_hidden, sample_steps, name

    # ------------------------------------------------------------------ energy-model interface
    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = -b^T v - sum_j softplus(c_j + v^T W_j), so that p(v) = exp(-F(v)) / Z."""
        return -(v @ self.visible_bias) - F.softplus(v @ self.weight + self.hidden_bias).sum(-1)

    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(v @ self.weight + self.hidden_bias)

    def visible_probs(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h @ self.weight.T + self.visible_bias)

    @torch.no_grad()
    def gibbs(self, v: torch.Tensor, steps: int = 1) -> torch.Tensor:
        """``steps`` full Gibbs sweeps v -> h -> v, starting from ``v``."""
        for _ in range(steps):
            v = torch.bernoulli(self.visible_probs(torch.bernoulli(self.hidden_probs(v))))
        return v

    def log_partition(self, max_units: int = 20) -> torch.Tensor:
        """log Z exactly, summing over the smaller layer's 2^n configurations (at most ``max_units`` units)."""
        small = min(self.n_visible, self.n_hidden)
        if small > max_units:
            raise UsageError(
                f"exact log Z sums 2^{small} terms; at most 2^{max_units} are enumerated (use ais_log_partition)"
            )
        configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=small)), dtype=self.weight.dtype)
        configs = configs.to(self.weight.device)
        if self.n_hidden <= self.n_visible:
            terms = configs @ self.hidden_bias + F.softplus(configs @ self.weight.T + self.visible_bias).sum(-1)
        else:
            terms = -self.free_energy(configs)
        return torch.logsumexp(terms, 0)

    def log_marginal(self, v: torch.Tensor) -> torch.Tensor:
        """Exact log p(v) = -F(v) - log Z (log Z by enumeration: small RBMs only)."""
        return -self.free_energy(v) - self.log_partition()

    @torch.no_grad()
    def ais_log_partition(
        self,
        num_chains: int = 100,
        num_betas: int = 1000,
        base_visible_bias: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[float, float]:
        r"""log Z by annealed importance sampling (Salakhutdinov & Murray 2008, §4).

        Anneals from a base RBM with no weights (visible biases ``base_visible_bias``, e.g. the data's
        log-odds; zeros by default), whose :math:`Z_A = 2^{n_h} \prod_i (1 + e^{b_{A,i}})`, to this
        RBM along :math:`p_\beta(v) \propto e^{(1-\beta) b_A^\top v + \beta b^\top v}
        \prod_j (1 + e^{\beta (c_j + v^\top W_j)})`, with one Gibbs sweep per temperature.
        Returns the estimate and its standard error (delta method on the importance weights).
        """
        device, dtype = self.weight.device, self.weight.dtype
        base = (
            torch.zeros(self.n_visible, device=device, dtype=dtype) if base_visible_bias is None else base_visible_bias
        )
        betas = torch.linspace(0.0, 1.0, num_betas, device=device, dtype=dtype)

        def log_f(v: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
            pre = beta * (v @ self.weight + self.hidden_bias)
            return (1 - beta) * (v @ base) + beta * (v @ self.visible_bias) + F.softplus(pre).sum(-1)

        def uniform(shape):
            return torch.rand(shape, device=device, dtype=dtype, generator=generator)

        v = (uniform((num_chains, self.n_visible)) < torch.sigmoid(base)).to(dtype)
        log_w = torch.zeros(num_chains, device=device, dtype=dtype)
        for prev, beta in zip(betas[:-1], betas[1:]):
            log_w += log_f(v, beta) - log_f(v, prev)
            h = (uniform((num_chains, self.n_hidden)) < torch.sigmoid(beta * (v @ self.weight + self.hidden_bias))).to(
                dtype
            )
            v_logits = (1 - beta) * base + beta * (h @ self.weight.T + self.visible_bias)
            v = (uniform((num_chains, self.n_visible)) < torch.sigmoid(v_logits)).to(dtype)
        log_z_base = self.n_hidden * math.log(2.0) + F.softplus(base).sum()
        log_mean_w = torch.logsumexp(log_w, 0) - math.log(num_chains)
        relative = (log_w - log_mean_w).exp()
        stderr = relative.std() / math.sqrt(num_chains)
        return float(log_z_base + log_mean_w), float(stderr)

    # ------------------------------------------------------------------ the Pyro program
    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        pyro.module(self.name, self)
        n = x.shape[0] if x is not None else batch_size
        with pyro.plate("data", n):
            return pyro.sample("x", RBMMarginal(self), obs=x)


class RBMMarginal(dist.TorchDistribution):
    """The visible marginal of an RBM as a Pyro site: ``log_prob`` is -F(v) - ``log_z`` and ``sample`` runs Gibbs.

    With the default ``log_z = 0`` the log-probability is unnormalised; pass the RBM's log Z for the exact one.
    """

    arg_constraints: dict = {}
    has_rsample = False
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, rbm: RBM, log_z: torch.Tensor | float = 0.0, batch_shape: tuple[int, ...] = ()) -> None:
        self.rbm, self.log_z = rbm, log_z
        super().__init__(torch.Size(batch_shape), torch.Size([rbm.n_visible]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return RBMMarginal(self.rbm, self.log_z, tuple(batch_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return -self.rbm.free_energy(value) - self.log_z

    @torch.no_grad()
    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        start = torch.bernoulli(torch.full(shape, 0.5, device=self.rbm.weight.device, dtype=self.rbm.weight.dtype))
        return self.rbm.gibbs(start, self.rbm.sample_steps)

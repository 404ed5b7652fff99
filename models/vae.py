"""Bernoulli-decoder VAE model: p(z) = N(0, I), p(x | z) = Bernoulli(logits = MLP(z))."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppdgm.models.nets import mlp


class BernoulliMLPModel(nn.Module):
    """A plain Pyro model with an MLP decoder.

    Call it as ``model(x)`` (data side) or ``model(batch_size=n)`` (generate n datapoints).

    Args:
        x_dim: number of visible units (e.g. 784).
        z_dim: number of latent units.
        hidden: hidden layer sizes of the decoder, from z to x.
        activation: ``"tanh"``, ``"relu"``, ...
        name: the name its parameters are registered under with ``pyro.module``.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 50,
        hidden: Sequence[int] = (200, 200),
        activation: str = "tanh",
        name: str = "decoder",
    ) -> None:
        super().__init__()
        self.x_dim, self.z_dim, self.name = x_dim, z_dim, name
        self.decoder = mlp([z_dim, *hidden, x_dim], activation)
        self.register_buffer("prior_loc", torch.zeros(z_dim))

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        pyro.module(self.name, self.decoder)
        n = x.shape[0] if x is not None else batch_size
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(self.prior_loc, 1.0).to_event(1))
            return pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

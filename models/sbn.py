r"""Sigmoid belief nets: layers of binary latents, each Bernoulli given the layer above.

.. math::

    h_L \sim \text{Bernoulli}(\sigma(b_L)), \quad
    h_{l} \mid h_{l+1} \sim \text{Bernoulli}(\sigma(W_l h_{l+1} + b_l)), \quad
    x \mid h_1 \sim \text{Bernoulli}(\sigma(W_0 h_1 + b_0)),

with learned top-layer prior logits :math:`b_L` (Neal 1992; the generative half of a Helmholtz
machine, Dayan et al. 1995). Sites are named ``h1`` (next to the data) to ``hL`` (top). Small nets
have an exact log-likelihood by enumeration: :func:`ppdgm.evaluate.exact_log_likelihood`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppdgm.errors import UsageError


class SigmoidBeliefNet(nn.Module):
    """A plain Pyro model: ``model(x)`` on the data side, ``model(batch_size=n)`` to generate.

    Args:
        x_dim: number of visible units.
        layers: latent layer sizes **from the data upwards**: ``(200,)``, ``(200, 200)``,
            ``(200, 200, 10)`` (the literature's "10-200-200" reads top-down).
        name: the name its parameters are registered under with ``pyro.module``.
    """

    def __init__(self, x_dim: int, layers: Sequence[int] = (200,), name: str = "sbn") -> None:
        super().__init__()
        if not layers or any(int(n) < 1 for n in layers):
            raise UsageError(f"layers must be one or more positive sizes, got {layers!r}")
        self.x_dim, self.layers, self.name = x_dim, tuple(int(n) for n in layers), name
        sizes = [x_dim, *self.layers]
        # generative[l] maps layer l+1 to the logits of layer l (layer 0 is x)
        self.generative = nn.ModuleList(nn.Linear(sizes[i + 1], sizes[i]) for i in range(len(self.layers)))
        self.top_logits = nn.Parameter(torch.zeros(self.layers[-1]))

    @property
    def latent_sites(self) -> tuple[str, ...]:
        return tuple(f"h{i}" for i in range(len(self.layers), 0, -1))

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        pyro.module(self.name, self)
        n = x.shape[0] if x is not None else batch_size
        top = len(self.layers)
        with pyro.plate("data", n):
            h = pyro.sample(f"h{top}", dist.Bernoulli(logits=self.top_logits).to_event(1))
            for layer in range(top - 1, 0, -1):
                h = pyro.sample(f"h{layer}", dist.Bernoulli(logits=self.generative[layer](h)).to_event(1))
            return pyro.sample("x", dist.Bernoulli(logits=self.generative[0](h)).to_event(1), obs=x)

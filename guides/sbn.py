"""Recognition networks for sigmoid belief nets: factorised Bernoulli layers, bottom-up."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppdgm.models.nets import mlp


class SBNRecognition(nn.Module):
    """q(h1 | x) q(h2 | h1) ... q(hL | h_{L-1}), each a factorised Bernoulli (a Helmholtz machine's guide).

    Args:
        x_dim: number of visible units.
        layers: latent layer sizes from the data upwards (as in :class:`~ppdgm.models.SigmoidBeliefNet`).
        hidden: hidden sizes of an MLP per layer; ``()`` (default) makes each layer linear-sigmoid,
            the classic Helmholtz machine recognition model.
        activation: activation of the hidden layers.
        name: the name its parameters are registered under with ``pyro.module``.
    """

    def __init__(
        self,
        x_dim: int,
        layers: Sequence[int] = (200,),
        hidden: Sequence[int] = (),
        activation: str = "tanh",
        name: str = "recognition",
    ) -> None:
        super().__init__()
        self.layers, self.name = tuple(layers), name
        sizes = [x_dim, *self.layers]
        self.recognition = nn.ModuleList(
            mlp([sizes[i], *hidden, sizes[i + 1]], activation) for i in range(len(self.layers))
        )

    def forward(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        pyro.module(self.name, self)
        h = x
        with pyro.plate("data", x.shape[0]):
            for layer, net in enumerate(self.recognition, start=1):
                h = pyro.sample(f"h{layer}", dist.Bernoulli(logits=net(h)).to_event(1))
        return h

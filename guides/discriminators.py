r"""Discriminators written as Pyro programs: q_ψ(y | inputs), y = 1 for real, 0 for generated.

A discriminator program is called as ``discriminator(inputs, y=None)`` and scores the indicator
with ``pyro.sample("y", dist.Bernoulli(logits=net(inputs)), obs=y)`` in a plate over the rows of
``inputs``. Under :class:`ppdgm.methods.adversarial.Reverse` the same program is the reversed
discriminator q^r(y | inputs) = q(1 - y | inputs) the generator learns from.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppdgm.errors import UsageError


class Discriminator(nn.Module):
    """Turn a network ``inputs -> logit`` (shape ``(B,)`` or ``(B, 1)``) into a discriminator program.

    Args:
        net: the network; its output is the logit of y = 1 (the input is real).
        name: the name its parameters are registered under with ``pyro.module``.
        site: the name of the indicator site.
    """

    def __init__(self, net: nn.Module, name: str = "discriminator", site: str = "y") -> None:
        super().__init__()
        self.net, self.name, self.site = net, name, site

    def forward(self, inputs: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        pyro.module(self.name, self.net)
        logits = self.net(inputs)
        if logits.dim() == 2 and logits.shape[-1] == 1:
            logits = logits.squeeze(-1)
        with pyro.plate(f"{self.name}_data", inputs.shape[0]):
            return pyro.sample(self.site, dist.Bernoulli(logits=logits), obs=y)


def leaky_mlp(sizes: Sequence[int], slope: float = 0.2) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with LeakyReLU(slope) between them (the GAN default)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(slope))
    return nn.Sequential(*layers)


class MLPDiscriminator(Discriminator):
    """q(y = 1 | inputs) = sigmoid(MLP(flattened inputs)), LeakyReLU(0.2) hidden layers."""

    def __init__(self, in_dim: int, hidden: Sequence[int] = (256, 256), name: str = "discriminator") -> None:
        super().__init__(nn.Sequential(nn.Flatten(), leaky_mlp([in_dim, *hidden, 1])), name=name)


class ConvDiscriminator(Discriminator):
    """DCGAN-style discriminator for ``side x side`` single-channel images given flat (B, side*side).

    Two stride-2 4x4 convolutions (``channels`` wide, LeakyReLU(0.2)), then a linear logit.
    """

    def __init__(self, side: int = 28, channels: tuple[int, int] = (64, 128), name: str = "discriminator") -> None:
        if side % 4:
            raise UsageError(f"ConvDiscriminator needs an image side divisible by 4, got {side}")
        features, n_features = dcgan_features((1, side, side), channels)
        super().__init__(nn.Sequential(*features, nn.Linear(n_features, 1)), name=name)


def dcgan_features(image_shape: Sequence[int], channels: Sequence[int]) -> tuple[nn.Sequential, int]:
    """Flat ``(C, H, W)`` rows -> two stride-2 4x4 convolutions with LeakyReLU(0.2) -> flat features: the DCGAN
    discriminator's network before its logit, and the number of features (H and W divisible by 4)."""
    c, h, w = image_shape
    c1, c2 = channels
    features = nn.Sequential(
        nn.Unflatten(1, (c, h, w)),
        nn.Conv2d(c, c1, 4, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
    )
    return features, c2 * (h // 4) * (w // 4)

"""Generators: Pyro models whose x is a deterministic (or nearly) function of a noise z.

``model(x=None, batch_size=None)`` like every ppdgm model: z ~ N(0, I), x = G(z). With
``noise_scale=None`` the x site is ``Delta(G(z))`` (a GAN generator: a sample is differentiable in
θ, a likelihood is not defined); with a scale it is ``Normal(G(z), noise_scale)``, which also has a
density, so likelihood-based methods can train the same model.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppdgm.errors import UsageError
from ppdgm.guides.discriminators import ConvDiscriminator
from ppdgm.models.convolutional import dcgan_generator_net
from ppdgm.models.nets import mlp

OUTPUTS = {"identity": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class _Generator(nn.Module):
    def __init__(self, net: nn.Module, z_dim: int, noise_scale: float | None, name: str) -> None:
        super().__init__()
        self.net, self.z_dim, self.noise_scale, self.name = net, z_dim, noise_scale, name
        self.register_buffer("prior_loc", torch.zeros(z_dim))

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        pyro.module(self.name, self.net)
        n = x.shape[0] if x is not None else batch_size
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(self.prior_loc, 1.0).to_event(1))
            out = self.net(z)
            if self.noise_scale is None:
                fn = dist.Delta(out, event_dim=1)
            else:
                fn = dist.Normal(out, self.noise_scale).to_event(1)
            return pyro.sample("x", fn, obs=x)


def output_layer(name: str) -> nn.Module:
    try:
        return OUTPUTS[name]()
    except KeyError:
        raise UsageError(f"unknown output {name!r}; known: {sorted(OUTPUTS)}") from None


class MLPGenerator(_Generator):
    """x = output(MLP(z)), z ~ N(0, I): an MLP generator for vectors (2-D toy data, flat images).

    Args:
        x_dim, z_dim: sizes of x and of the noise z.
        hidden: hidden layer sizes from z to x.
        activation: hidden activation.
        output: ``"identity"`` (real data), ``"sigmoid"`` (pixels in [0, 1]) or ``"tanh"``.
        noise_scale: ``None`` for a Delta x site, or the fixed scale of a Normal x site.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 2,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
        output: str = "identity",
        noise_scale: float | None = None,
        name: str = "generator",
    ) -> None:
        super().__init__(
            nn.Sequential(mlp([z_dim, *hidden, x_dim], activation), output_layer(output)), z_dim, noise_scale, name
        )


class DCGANGenerator(_Generator):
    """DCGAN-style generator of ``side x side`` single-channel images, returned flat ``(B, side*side)``.

    z -> linear -> (c1, side/4, side/4) -> 4x4 stride-2 transposed convolutions with batch norm and
    ReLU -> sigmoid pixels.
    """

    def __init__(
        self,
        z_dim: int = 64,
        side: int = 28,
        channels: tuple[int, int] = (128, 64),
        noise_scale: float | None = None,
        name: str = "generator",
    ) -> None:
        if side % 4:
            raise UsageError(f"DCGANGenerator needs an image side divisible by 4, got {side}")
        net = dcgan_generator_net(z_dim, (1, side, side), channels)
        super().__init__(net, z_dim, noise_scale, name)
        self.side = side

    def make_discriminator(self) -> nn.Module:
        """The matching DCGAN-style discriminator program (methods that discriminate x use it by default)."""

        return ConvDiscriminator(self.side)

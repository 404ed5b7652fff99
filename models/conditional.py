"""Conditional models: the class label is an input, p(x | y), as in a class-conditional VAE or a conditional GAN.

Written the way Pyro's tutorials write programs: ``model(x, y)`` and ``guide(x, y)`` take the batch's
columns positionally, so ``ppdgm.fit(cvae.model, cvae.guide, (images, labels), "vae")`` trains them, and
``ppdgm.sample(run, condition=labels)`` draws images of given classes. ``y`` is one-hot (float), one row
per datapoint; no site observes it, so ppdgm treats it as an input: on the model side (sampling, a
GAN's generator) the labels come from the batch's rows or from ``condition=``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppdgm.models.gan import output_layer
from ppdgm.models.nets import broadcast_cat, mlp


class ConditionalVAE(nn.Module):
    """A class-conditional VAE (Sohn et al. 2015; Kingma et al. 2014's M1+label decoder) for flat binary images.

    p(z) = N(0, I), p(x | z, y) = Bernoulli(decoder([z, y])); q(z | x, y) = N(encoder([x, y])).

    Args:
        x_dim, classes, z_dim: sizes of x, of the one-hot y and of z.
        hidden: hidden layer sizes of the decoder (the encoder mirrors them).
    """

    def __init__(self, x_dim: int, classes: int, z_dim: int = 8, hidden: Sequence[int] = (128,)) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.decoder = mlp([z_dim + classes, *hidden, x_dim], "tanh")
        self.encoder = mlp([x_dim + classes, *reversed(hidden), 2 * z_dim], "tanh")
        self.register_buffer("prior_loc", torch.zeros(z_dim))

    def model(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pyro.module("cvae_decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.prior_loc, 1.0).to_event(1))
            logits = self.decoder(broadcast_cat(z, y))
            return pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("cvae_encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw_scale = self.encoder(broadcast_cat(x, y)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw_scale) + 1e-3).to_event(1))


class ConditionalGenerator(nn.Module):
    """A conditional GAN generator (Mirza & Osindero 2014): z ~ N(0, I), x = output(MLP([z, y])), a Delta x site.

    Train it with ``method="gan"`` (or ``"iwgan"``) on ``(x, y)`` columns: the discriminator sees
    ``[x, y]``, real rows with their labels and generated rows with the labels they were made for.
    """

    def __init__(
        self, x_dim: int, classes: int, z_dim: int = 16, hidden: Sequence[int] = (128, 128), output: str = "sigmoid"
    ) -> None:
        super().__init__()

        self.z_dim = z_dim
        self.net = nn.Sequential(mlp([z_dim + classes, *hidden, x_dim], "leaky_relu"), output_layer(output))
        self.register_buffer("prior_loc", torch.zeros(z_dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pyro.module("cgan_generator", self.net)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.prior_loc, 1.0).to_event(1))
            return pyro.sample("x", dist.Delta(self.net(broadcast_cat(z, y)), event_dim=1), obs=x)

"""Recognition networks written as plain Pyro guides (``guide(x=None, batch_size=None)``)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from ppdgm.models.nets import mlp


class GaussianMLPEncoder(nn.Module):
    """q(z | x) = N(loc(x), diag scale(x)^2) with an MLP trunk; scale = softplus(.) + min_scale.

    Args:
        x_dim, z_dim: sizes of x and z.
        hidden: hidden layer sizes, from x to z.
        activation: ``"tanh"``, ``"relu"``, ...
        site: name of the latent site it samples (must match the model's).
        name: the name its parameters are registered under with ``pyro.module``.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 50,
        hidden: Sequence[int] = (200, 200),
        activation: str = "tanh",
        site: str = "z",
        name: str = "encoder",
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        self.net = mlp([x_dim, *hidden, 2 * z_dim], activation)
        self.z_dim, self.site, self.name, self.min_scale = z_dim, site, name, min_scale

    def forward(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        pyro.module(self.name, self.net)
        loc, raw_scale = self.net(x).split(self.z_dim, -1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample(self.site, dist.Normal(loc, F.softplus(raw_scale) + self.min_scale).to_event(1))


class AffineGaussianGuide(nn.Module):
    """Mean-field q(z | x) = N(A x + c, diag(softplus(s))^2): a simple learnable amortised guide."""

    def __init__(self, x_dim: int, z_dim: int, site: str = "z", name: str = "affine_guide") -> None:
        super().__init__()
        self.linear = nn.Linear(x_dim, z_dim)
        self.raw_scale = nn.Parameter(torch.zeros(z_dim))
        self.site, self.name = site, name

    def forward(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        pyro.module(self.name, self)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample(self.site, dist.Normal(self.linear(x), F.softplus(self.raw_scale)).to_event(1))


class ExactLinearGaussianGuide(nn.Module):
    """The exact posterior p(z | x) of a :class:`~ppdgm.models.LinearGaussianModel` as a guide.

    It reads the model's current ``W`` and ``b`` without owning (or moving) them: it has no
    parameters of its own, so with it the ELBO equals log p(x) exactly.
    """

    def __init__(self, model: nn.Module, site: str = "z") -> None:
        super().__init__()
        self._model = [model]  # a list so that the model's parameters are not this module's
        self.site = site

    def forward(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        model = self._model[0]
        with torch.no_grad():
            mean, cov = model.posterior(x)
            scale_tril = torch.linalg.cholesky(cov)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample(self.site, dist.MultivariateNormal(mean, scale_tril=scale_tril))


class ImplicitMLPEncoder(nn.Module):
    """An implicit q(z | x): z = MLP([x, ε]) with ε ~ N(0, I), scored as ``Delta`` (samples only, no density).

    A Gaussian q(z | x) cannot match a posterior of another shape — e.g. the wedge of the prior that a
    generator sends to one mode of a mixture — and ALI/BiGAN's joint discriminator then always has
    something to tell apart. Feeding noise to the network lets q take any shape; the methods that
    only draw from the guide and back-propagate through its samples (``bigan``, ``aae``) train it.
    Methods built on log q(z | x) (``vae``, ``iwae``, ``rws``...) read log q = 0 off the Delta, so
    their objectives lose the entropy term: use a :class:`GaussianMLPEncoder` with those.

    Args:
        x_dim, z_dim: sizes of x and z.
        hidden: hidden layer sizes, from ``[x, ε]`` to z.
        noise_dim: size of ε (default: ``z_dim``).
        activation, site, name: as :class:`GaussianMLPEncoder`.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 50,
        hidden: Sequence[int] = (200, 200),
        noise_dim: int | None = None,
        activation: str = "relu",
        site: str = "z",
        name: str = "encoder",
    ) -> None:
        super().__init__()
        self.noise_dim = z_dim if noise_dim is None else noise_dim
        self.net = mlp([x_dim + self.noise_dim, *hidden, z_dim], activation)
        self.z_dim, self.site, self.name = z_dim, site, name

    def forward(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        pyro.module(self.name, self.net)
        flat = x.reshape(x.shape[0], -1)
        noise = torch.randn(flat.shape[0], self.noise_dim, dtype=flat.dtype, device=flat.device)
        z = self.net(torch.cat([flat, noise], -1))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample(self.site, dist.Delta(z, event_dim=1))

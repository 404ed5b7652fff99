r"""Linear-Gaussian model with exact marginal likelihood and posterior.

.. math::

    z \sim \mathcal{N}(0, I_{d_z}), \qquad x \mid z \sim \mathcal{N}(W z + b, \sigma^2 I_{d_x}),

so :math:`p(x) = \mathcal{N}(x; b, W W^\top + \sigma^2 I)` and
:math:`p(z \mid x) = \mathcal{N}(\Sigma W^\top (x - b) / \sigma^2, \Sigma)` with
:math:`\Sigma = (I + W^\top W / \sigma^2)^{-1}`. The anchor for exact-answer tests of estimators.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class LinearGaussianModel(nn.Module):
    """``x = W z + b + noise``; ``W`` and ``b`` are learnable, the noise scale is fixed.

    Args:
        x_dim, z_dim: sizes of x and z.
        noise_scale: the observation noise standard deviation σ.
        seed: seed of the random initial ``W`` (standard normal entries scaled by 1/sqrt(z_dim)).
    """

    def __init__(self, x_dim: int, z_dim: int, noise_scale: float = 0.5, seed: int | None = 0, name: str = "linear"):
        super().__init__()
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.weight = nn.Parameter(torch.randn(x_dim, z_dim, generator=gen) / z_dim**0.5)
        self.bias = nn.Parameter(torch.randn(x_dim, generator=gen) * 0.1)
        self.register_buffer("noise_scale", torch.tensor(float(noise_scale)))
        self.register_buffer("prior_loc", torch.zeros(z_dim))
        self.x_dim, self.z_dim, self.name = x_dim, z_dim, name

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        pyro.module(self.name, self)
        n = x.shape[0] if x is not None else batch_size
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(self.prior_loc, 1.0).to_event(1))
            loc = z @ self.weight.T + self.bias
            return pyro.sample("x", dist.Normal(loc, self.noise_scale).to_event(1), obs=x)

    def marginal(self) -> dist.MultivariateNormal:
        """The exact marginal p(x)."""
        cov = self.weight @ self.weight.T + self.noise_scale**2 * torch.eye(self.x_dim).to(self.weight)
        return dist.MultivariateNormal(self.bias, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per datapoint."""
        return self.marginal().log_prob(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact posterior mean (per datapoint) and covariance (shared) of z given x."""
        w, s2 = self.weight, self.noise_scale**2
        precision = torch.eye(self.z_dim).to(w) + w.T @ w / s2
        cov = torch.linalg.inv(precision)
        mean = (x - self.bias) @ w @ cov.T / s2
        return mean, cov

r"""Semi-supervised VAE: Kingma, Rezende, Mohamed & Welling (2014), "Semi-supervised Learning with Deep
Generative Models", model M2.

.. math::

    p(y) = \mathrm{Cat}(1/C), \quad p(z) = \mathcal{N}(0, I),
    \quad p_\theta(x \mid y, z) = \mathrm{Bernoulli}(f_\theta(y, z)),
    \qquad q_\phi(y \mid x) = \mathrm{Cat}(\pi_\phi(x)),
    \quad q_\phi(z \mid x, y) = \mathcal{N}(\mu_\phi(x, y), \sigma_\phi(x, y)).

The label is *partially observed*: the data are three columns ``(x, y, labelled)`` — images, one-hot
labels (any valid one-hot row where the label is missing) and a boolean mask — and the model observes y
with Pyro's own ``obs_mask``: ``pyro.sample("y", p(y), obs=y, obs_mask=labelled)``. Pyro splits the site
into ``y_observed`` (the labelled rows) and the latent ``y_unobserved``, which the guide proposes from
:math:`q_\phi(y \mid x)` and marks for enumeration, so ``method="vae"`` sums it out exactly:
:math:`\mathcal{U}(x) = \sum_y q_\phi(y \mid x)\,[\mathcal{L}(x, y)] + \mathcal{H}(q_\phi(y \mid x))` on
unlabelled rows, :math:`\mathcal{L}(x, y)` on labelled ones (where the guide proposes the known label).

Kingma et al. add :math:`\alpha \log q_\phi(y \mid x)` on labelled rows so that the classifier also learns
from the labels directly. Here that is the model option ``classification_weight`` (α), a ``pyro.factor``
in the model that reads the guide's classifier: its gradient reaches the classifier (the guide's player)
and it is zero on unlabelled rows. Named data sets give their validation and test rows unlabelled
(:func:`ppdgm.data.images.evaluation_mask`), so the test ELBO is the bound on log p(x); ``ppdgm.evaluate``
refuses a likelihood of labelled rows, where the term is not zero. Kingma et al. use
α = 0.1·N; on small data sets a weight of the order of the data dimension works.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from torch import nn

from ppdgm.models.nets import broadcast_cat, mlp


class SemiSupervisedVAE(nn.Module):
    """M2: ``model(x, y, labelled)`` and ``guide(x, y, labelled)``; :meth:`classify` is q(y | x).

    Args:
        x_dim, classes, z_dim: sizes of x, of the one-hot y and of z.
        hidden: hidden layer sizes of every network.
        classification_weight: α of the classification term α·log q(y | x) on labelled rows (0: none).
    """

    def __init__(
        self,
        x_dim: int,
        classes: int,
        z_dim: int = 8,
        hidden: Sequence[int] = (128,),
        classification_weight: float = 64.0,
    ) -> None:
        super().__init__()
        self.classes, self.z_dim = classes, z_dim
        self.classification_weight = float(classification_weight)
        self.decoder = mlp([z_dim + classes, *hidden, x_dim], "softplus")
        self.encoder_z = mlp([x_dim + classes, *hidden, 2 * z_dim], "softplus")
        self.encoder_y = mlp([x_dim, *hidden, classes], "softplus")
        self.register_buffer("prior_loc", torch.zeros(z_dim))
        self.register_buffer("prior_logits", torch.zeros(classes))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of q(y | x)."""
        return self.encoder_y(x)

    def model(self, x: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor) -> None:
        pyro.module("m2_decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            label = pyro.sample("y", dist.OneHotCategorical(logits=self.prior_logits), obs=y, obs_mask=labelled)
            z = pyro.sample("z", dist.Normal(self.prior_loc, 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(broadcast_cat(z, label))).to_event(1), obs=x)
            if self.classification_weight:
                log_q = dist.OneHotCategorical(logits=self.classify(x)).log_prob(y)
                pyro.factor("classification", self.classification_weight * log_q * labelled)

    @config_enumerate
    def guide(self, x: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor) -> None:
        pyro.module("m2_encoder_y", self.encoder_y)
        pyro.module("m2_encoder_z", self.encoder_z)
        with pyro.plate("data", x.shape[0]):
            probs = torch.softmax(self.classify(x), -1)
            # where the label is known, y_unobserved plays no part in the model: propose the label itself
            probs = torch.where(labelled.unsqueeze(-1), y, probs)
            y_missing = pyro.sample("y_unobserved", dist.OneHotCategorical(probs=probs))
            label = torch.where(labelled.unsqueeze(-1), y, y_missing)
            loc, raw_scale = self.encoder_z(broadcast_cat(x, label)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw_scale) + 1e-3).to_event(1))

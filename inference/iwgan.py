r"""Importance weighted GAN: the GAN's generator objective tightened as IWAE tightens the ELBO.

Hu, Yang, Salakhutdinov & Xing (2018), "On Unifying Deep Generative Models", §5. In the unified
view the generator maximises :math:`\mathbb{E}_{p_\theta(x \mid y=0)}[\log q^r_\psi(y=0 \mid x)]`,
which plays the role of the ELBO with the discriminator as the "posterior". Reading the reversed and
the plain discriminator as target and proposal, each generated sample carries the importance weight

.. math::

    w_i = \frac{q^r_\psi(y=0 \mid x_i)}{q_\psi(y=0 \mid x_i)} = \frac{D(x_i)}{1 - D(x_i)}
        = \exp(\operatorname{logit} D(x_i)),

and, as in IWAE, the generator step draws k samples per group, normalises their weights within the
group and treats them as constants:

.. math::

    \nabla_\theta \approx \sum_{i=1}^k \tilde w_i \nabla_\theta \log q^r_\psi(y=0 \mid x_i),
    \qquad \tilde w_i = \frac{w_i}{\sum_j w_j}.

Samples the discriminator finds more realistic count more. With k = 1 the weight is 1 and the step
is the non-saturating GAN's. The discriminator learns as in :class:`~ppdgm.inference.gan.GAN`, on the
first sample of each group.
"""

from __future__ import annotations

import torch

from ppdgm.errors import positive_int
from ppdgm.inference.gan import GAN
from ppdgm.methods.adversarial import generated_x
from ppdgm.methods.base import register
from ppdgm.programs.batch import Data
from ppdgm.programs.combine import self_normalised_weights
from ppdgm.programs.pair import ProgramPair


@register
class IWGAN(GAN):
    """Importance weighted GAN: k generated samples per group, weighted by D/(1-D) normalised in the group.

    ``method="iwgan"``.

    Args:
        num_particles: k, generated samples per group (one group per datapoint of the batch).
    """

    name = "iwgan"
    accepts_columns = True
    players = ("model", "discriminator")
    objective_name = "gan_value"

    def __init__(self, num_particles: int = 5, **options) -> None:
        super().__init__(generator_loss="nonsaturating", **options)
        self.num_particles = positive_int("num_particles", num_particles)

    def options(self) -> dict:
        options = super().options()
        del options["generator_loss"]
        return {"num_particles": self.num_particles, **options}

    def generate(self, programs: ProgramPair, rows: Data) -> torch.Tensor:
        """``(k, B, ...)`` discriminator views of generated x, k per datapoint: one model-side run of k·B rows
        (any generator network works, batch norm included; a conditional model's inputs repeated), grouped k by k."""
        if isinstance(rows, int):
            rows = programs.placeholder(rows)
        batch_size = len(rows)
        index = torch.arange(batch_size, device=programs.observed_of(rows).device).repeat(self.num_particles)
        repeated = rows[index]
        x = generated_x(programs, programs.model_side(repeated), self.generator_output)
        seen = self.view(programs, x, repeated)
        return seen.reshape(self.num_particles, batch_size, *seen.shape[1:])

    def log_weights(self, fake: torch.Tensor) -> torch.Tensor:
        """log w = log q^r(y=0|x) - log q(y=0|x) = logit D(x) per generated row, shape ``fake.shape[:2]``."""
        rows = fake.reshape(-1, *fake.shape[2:])
        zeros = self.adversary.labels(rows.shape[0], 0, rows)
        log_w = self.adversary.log_prob(rows, zeros, reversed=True) - self.adversary.log_prob(rows, zeros)
        return log_w.reshape(fake.shape[:2])

    def discriminator_rows(self, fake: torch.Tensor) -> torch.Tensor:
        return fake[0]

    def generator_loss_of(self, fake: torch.Tensor) -> torch.Tensor:
        """-sum_i w~_i log q^r(y=0 | x_i), the weights normalised within each group and held constant."""
        rows = fake.reshape(-1, *fake.shape[2:])
        log_qr = self.adversary.log_prob(rows, self.adversary.labels(rows.shape[0], 0, rows), reversed=True)
        log_qr = log_qr.reshape(fake.shape[:2])
        if self.num_particles == 1:
            return -log_qr.mean()
        weights = self_normalised_weights(self.log_weights(fake.detach()).detach())
        return -(weights * log_qr).sum(0).mean()

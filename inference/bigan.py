r"""ALI / BiGAN: a discriminator on (x, z) pairs, latent and visible variables treated alike.

Donahue, Krähenbühl & Darrell (2016), "Adversarial Feature Learning"; Dumoulin et al. (2016),
"Adversarially Learned Inference". The two sides of ppdgm are the two joint distributions:

* the **data side** :math:`q(x, z) = p_{data}(x)\, q_\phi(z \mid x)` — x from the batch, z from the guide
  (y = 1);
* the **model side** :math:`p(x, z) = p(z)\, p_\theta(x \mid z)` — z from the prior, x generated (y = 0).

The discriminator :math:`q_\psi(y \mid x, z)` learns to tell them apart; the model and the guide
learn together on the reversed discriminator,
:math:`\max_{\theta, \phi} \mathbb{E}_{p(y)}\mathbb{E}[\log q^r_\psi(y \mid x, z)]`, which at the
optimum makes the two joints equal, so the guide inverts the generator. In the unified view this is
the GAN with the latent z promoted to a visible variable of both sides.

Only samples of the guide are needed, so it may be implicit
(:class:`~ppdgm.guides.ImplicitMLPEncoder`, z = MLP(x, ε)): when the generator's posterior is far
from Gaussian — a prior carved into wedges, one per mode of the data — a Gaussian q(z | x) leaves the
joints apart and the discriminator's pressure blurs the samples.
"""

from __future__ import annotations

import torch
from pyro.poutine.trace_struct import Trace

from ppdgm.methods.adversarial import AdversarialMethod, generated_x
from ppdgm.methods.base import register
from ppdgm.methods.engine import Engine
from ppdgm.programs.pair import ProgramPair
from ppdgm.programs.rows import flatten_rows


@register
class BiGAN(AdversarialMethod):
    """ALI/BiGAN: discriminator on (x, z) pairs — data-side pairs vs model-side pairs.

    ``method="bigan"`` (alias ``"ali"``).
    """

    name = "bigan"
    aliases = ("ali",)
    requires_guide = True
    needs_reparameterised_guide = True
    discriminates = "xz"
    objective_name = "gan_value"

    def pair(self, programs: ProgramPair, x: torch.Tensor, trace: Trace) -> torch.Tensor:
        """Flattened (x, z) rows: x beside the latents of ``trace``."""
        return flatten_rows([x, programs.latent_values(trace, len(x))], len(x))

    def discriminator_inputs(self, programs: ProgramPair, dream: Trace, x: torch.Tensor) -> torch.Tensor:
        return self.pair(programs, generated_x(programs, dream, self.generator_output), dream)

    def sides(self, programs: ProgramPair, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The data side's (x, z ~ q(z|x)) pairs and the model side's (x ~ p(x|z), z ~ p(z)) pairs."""
        real = self.pair(programs, x, programs.encode(x))
        fake = self.discriminator_inputs(programs, programs.model_side(x), x)
        return real, fake

    def step(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        generate = self.generator_turn()
        with torch.set_grad_enabled(generate):
            real, fake = self.sides(engine.programs, x)
        d_loss = -self.adversary.score(real.detach(), fake.detach())
        engine.update(d_loss, ("discriminator",))
        if generate:
            g_loss = -self.adversary.score(real, fake, reversed=True)
            engine.update(g_loss, ("model", "guide"))
            self.remember(generator_loss=g_loss)
        return {"discriminator_loss": d_loss.detach(), **self.recall()}

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        """log q(y=1 | x, z_q) + log q(y=0 | x_g, z_p) per datapoint."""
        real, fake = self.sides(programs, x)
        n = len(x)
        return self.adversary.log_prob(real, self.adversary.labels(n, 1, x)) + self.adversary.log_prob(
            fake, self.adversary.labels(n, 0, x)
        )

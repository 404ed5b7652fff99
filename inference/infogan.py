r"""InfoGAN: a GAN whose generator also keeps a code c recoverable from its samples.

Chen, Duan, Houthooft, Schulman, Sutskever & Abbeel (2016), "InfoGAN: Interpretable Representation
Learning by Information Maximizing Generative Adversarial Nets". The model has latent sites for the
noise and for a code c; the guide :math:`q_\phi(c \mid x)` samples only the code sites (a *partial*
guide). Besides the GAN phases, the generator and the guide maximise the variational lower bound of
the mutual information

.. math::

    I(c; G(z, c)) \ge \mathbb{E}_{c \sim p(c),\, x \sim G(z, c)}[\log q_\phi(c \mid x)] + H(c),

weighted by λ. For the guide this is exactly the sleep phase of wake-sleep (score dreamt latents
given the dreamt x); for the generator the gradient also flows through the dreamt x. The generator
update is then :math:`\max_\theta \mathbb{E}[\log q^r_\psi(y \mid x)] + \lambda\,\mathbb{E}[\log q_\phi(c \mid x)]`.
"""

from __future__ import annotations

import torch

from ppdgm.methods.adversarial import AdversarialMethod, generated_x
from ppdgm.methods.base import register
from ppdgm.methods.engine import Engine
from ppdgm.programs.pair import ProgramPair


@register
class InfoGAN(AdversarialMethod):
    """InfoGAN: GAN plus a guide q(c|x) of the code sites, trained with the generator on log q(c|x).

    ``method="infogan"``. The code sites are the guide's sample sites.

    Args:
        information_weight: λ, the weight of the mutual-information bound.
    """

    name = "infogan"
    requires_guide = True
    partial_guide = True
    objective_name = "gan_value"

    def __init__(self, information_weight: float = 1.0, **options) -> None:
        super().__init__(**options)
        self.information_weight = float(information_weight)

    def options(self) -> dict:
        return {"information_weight": self.information_weight, **super().options()}

    def setup(self, programs: ProgramPair) -> None:
        super().setup(programs)
        programs.check_sleep()

    def step(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        programs = engine.programs
        generate = self.generator_turn()
        with torch.set_grad_enabled(generate):
            dream = programs.model_side(x)
            fake = generated_x(programs, dream, self.generator_output)
        d_loss = -self.adversary.score(x, fake.detach())
        engine.update(d_loss, ("discriminator",))
        if generate:
            fooled = self.adversary.fooled(fake)
            log_q_code = programs.score_guide(dream, x=fake)[1].mean()
            engine.update(-fooled - self.information_weight * log_q_code, ("model", "guide"))
            self.remember(generator_loss=-fooled, code_log_q=log_q_code)
        return {"discriminator_loss": d_loss.detach(), **self.recall()}

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        return self.gan_value(programs, x)

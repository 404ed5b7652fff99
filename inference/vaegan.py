r"""VAE-GAN: the ELBO plus a discriminator on reconstructions and samples.

Larsen, Sønderby, Larochelle & Winther (2016), "Autoencoding beyond pixels using a learned
similarity metric". The model is a VAE decoder and the guide its encoder. The discriminator tells
data (y = 1) from two kinds of generated x (y = 0): reconstructions :math:`\tilde x` decoded from
:math:`z \sim q_\phi(z \mid x)` and samples :math:`x_p` decoded from :math:`z \sim p(z)`. Per step:

* **discriminator** (ψ): maximise
  :math:`\log q_\psi(1 \mid x) + \log q_\psi(0 \mid \tilde x) + \log q_\psi(0 \mid x_p)`;
* **model and guide** (θ, φ): maximise
  :math:`\mathcal{L}_{ELBO}(x) + \gamma\,[\log q^r_\psi(0 \mid \tilde x) + \log q^r_\psi(0 \mid x_p)]`.
  The reconstructions are decoded from the guide's z *held fixed*, so the guide learns from the ELBO
  only, as in the paper, where the encoder takes no GAN gradient.

Unlike the paper, the pixel likelihood stays in the ELBO (the paper replaces it by a discriminator
feature distance). The discriminator sees the decoder's mean (``generator_output="mean"``), so
Bernoulli decoders work.
"""

from __future__ import annotations

import torch

from ppdgm.methods.adversarial import AdversarialMethod, generated_x
from ppdgm.methods.base import register
from ppdgm.methods.engine import Engine
from ppdgm.programs.pair import ProgramPair


@register
class VAEGAN(AdversarialMethod):
    """VAE-GAN: ELBO plus a discriminator on reconstructions and prior samples.

    ``method="vaegan"`` (alias ``"vae-gan"``).

    Args:
        adversarial_weight: γ, the weight of the decoder's adversarial term.
    """

    name = "vaegan"
    aliases = ("vae-gan",)
    requires_guide = True
    needs_reparameterised_guide = True
    needs_likelihood = True
    objective_name = "elbo"

    def __init__(self, adversarial_weight: float = 1.0, generator_output: str = "mean", **options) -> None:
        super().__init__(generator_output=generator_output, **options)
        self.adversarial_weight = float(adversarial_weight)

    def options(self) -> dict:
        return {"adversarial_weight": self.adversarial_weight, **super().options()}

    def step(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        programs = engine.programs
        side = programs.data_side(x, 1)
        elbo = side.elbo()
        generate = self.generator_turn()
        with torch.set_grad_enabled(generate):
            recon = generated_x(
                programs, programs.reconstruct(programs.detached(side.guide_trace), x), self.generator_output
            )
            prior = generated_x(programs, programs.model_side(x), self.generator_output)
        d_loss = -self.adversary.score(x, recon.detach(), prior.detach())
        engine.update(d_loss, ("discriminator",))
        loss = -elbo.mean()
        if generate:
            fooled = self.adversary.fooled(torch.cat([recon, prior]))
            loss = loss - self.adversarial_weight * fooled
            self.remember(generator_fools=fooled)
        engine.update(loss, ("model", "guide"))
        return {"elbo": elbo.mean().detach(), "discriminator_loss": d_loss.detach(), **self.recall()}

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        return programs.data_side(x, 1).elbo()

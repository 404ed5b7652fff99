r"""Adversarial autoencoder.

Makhzani, Shlens, Jaitly, Goodfellow & Frey (2015), "Adversarial Autoencoders". The guide is an
encoder and the model a decoder; a discriminator on the *latent* space tells prior draws
:math:`z \sim p(z)` (real, y = 1; the model side's latents) from codes :math:`z \sim q_\phi(z \mid x)`
(generated, y = 0; the data side's latents). Phases per step:

* **reconstruction** (θ, φ): maximise :math:`\mathbb{E}_{q_\phi(z \mid x)}[\log p_\theta(x \mid z)]`;
* **discriminator** (ψ): maximise :math:`\log q_\psi(y{=}1 \mid z_p) + \log q_\psi(y{=}0 \mid z_q)`;
* **regularisation** (φ): maximise :math:`\lambda\, \mathbb{E}[\log q^r_\psi(y{=}0 \mid z_q)]`, the reversed
  discriminator, which drives the aggregate posterior :math:`q_\phi(z)` to the prior.

In the unified view this is the GAN on z instead of x: the roles of latent and visible are swapped,
and the KL term of the ELBO is replaced by an adversarial one.
"""

from __future__ import annotations

import torch
from pyro.poutine.trace_struct import Trace

from ppdgm.methods.adversarial import AdversarialMethod
from ppdgm.methods.base import register
from ppdgm.methods.engine import Engine
from ppdgm.programs.pair import ProgramPair


@register
class AAE(AdversarialMethod):
    """Adversarial autoencoder: reconstruction plus a discriminator on z (prior draws vs guide codes).

    ``method="aae"``.

    Args:
        regularisation_weight: λ, the weight of the guide's adversarial term.
    """

    name = "aae"
    requires_guide = True
    needs_reparameterised_guide = True
    needs_likelihood = True
    discriminates = "z"
    needs_generator_gradient = False
    objective_name = "reconstruction"

    def __init__(self, regularisation_weight: float = 1.0, **options) -> None:
        super().__init__(**options)
        self.regularisation_weight = float(regularisation_weight)

    def options(self) -> dict:
        return {"regularisation_weight": self.regularisation_weight, **super().options()}

    def discriminator_inputs(self, programs: ProgramPair, dream: Trace, x: torch.Tensor) -> torch.Tensor:
        return programs.latent_values(dream, len(x))

    def reconstruction(self, programs: ProgramPair, x: torch.Tensor) -> tuple[torch.Tensor, Trace]:
        """log p(x | z) per datapoint at z ~ q(z | x), and the guide's trace."""
        side = programs.data_side(x, 1)
        rec = programs.log_prob(side.model_trace, 1, len(x), sites=(programs.obs_site,)).squeeze(0)
        return rec, side.guide_trace

    def step(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        programs, batch_size = engine.programs, len(x)
        rec, guide_trace = self.reconstruction(programs, x)
        codes = programs.latent_values(guide_trace, batch_size)
        with torch.no_grad():
            prior = programs.latent_values(programs.model_side(x), batch_size)
        d_loss = -self.adversary.score(prior, codes.detach())
        engine.update(d_loss, ("discriminator",))
        loss = -rec.mean()
        if self.generator_turn():
            fooled = self.adversary.fooled(codes)
            loss = loss - self.regularisation_weight * fooled
            self.remember(codes_fool_discriminator=fooled)
        engine.update(loss, ("model", "guide"))
        return {"reconstruction": rec.mean().detach(), "discriminator_loss": d_loss.detach(), **self.recall()}

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruction(programs, x)[0]

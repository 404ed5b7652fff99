r"""Wasserstein GAN with gradient penalty.

Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville (2017), "Improved Training of Wasserstein GANs".
The discriminator program's logit is the critic :math:`f_\psi` (a WGAN critic is a discriminator
without the sigmoid). Phases, the critic updating ``discriminator_steps`` times (default 5) per
generator update:

* **critic** (ψ): minimise :math:`\mathbb{E}_{p_g}[f(\tilde x)] - \mathbb{E}_{p_{data}}[f(x)]
  + \lambda\, \mathbb{E}_{\hat x}[(\lVert \nabla_{\hat x} f(\hat x) \rVert_2 - 1)^2]`, with
  :math:`\hat x = \epsilon x + (1 - \epsilon) \tilde x`, :math:`\epsilon \sim U(0, 1)` per row;
* **generator** (θ): minimise :math:`-\mathbb{E}_{p_g}[f(\tilde x)]`.

In the unified view the critic replaces log q(y | x) by an unbounded score of the same program;
the phases are the GAN's. The paper's optimizer is Adam(lr = 1e-4, betas = (0.5, 0.9)).
"""

from __future__ import annotations

import torch

from ppdgm.errors import UsageError
from ppdgm.methods.adversarial import AdversarialMethod, generated_x
from ppdgm.methods.base import register
from ppdgm.methods.engine import Engine
from ppdgm.programs.pair import ProgramPair


@register
class WGANGP(AdversarialMethod):
    """WGAN-GP: a critic (the discriminator's logit) with a gradient penalty; the generator maximises it.

    ``method="wgan-gp"`` (alias ``"wgan"``).

    Args:
        gradient_penalty: λ, the weight of the penalty (10 in the paper).
        discriminator_steps: critic updates per generator update (5 in the paper).
    """

    name = "wgan-gp"
    aliases = ("wgan",)
    players = ("model", "discriminator")
    objective_name = "critic_gap"

    def __init__(self, gradient_penalty: float = 10.0, discriminator_steps: int = 5, **options) -> None:
        super().__init__(discriminator_steps=discriminator_steps, **options)
        if gradient_penalty < 0:
            raise UsageError(f"gradient_penalty must be >= 0, got {gradient_penalty!r}")
        self.gradient_penalty = float(gradient_penalty)

    def options(self) -> dict:
        return {"gradient_penalty": self.gradient_penalty, **super().options()}

    def penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """E[(||grad f(x_hat)|| - 1)^2] on random interpolates of real and generated rows."""
        eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), dtype=real.dtype, device=real.device)
        mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.adversary.logits(mixed).sum(), mixed, create_graph=True)
        return (grad.reshape(grad.shape[0], -1).norm(dim=-1) - 1).pow(2).mean()

    def step(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        programs = engine.programs
        generate = self.generator_turn()
        with torch.set_grad_enabled(generate):
            fake = generated_x(programs, programs.model_side(x), self.generator_output)
        critic = self.adversary.logits(torch.cat([x, fake.detach()]))
        gap = critic[: len(x)].mean() - critic[len(x) :].mean()
        loss = -gap
        if self.gradient_penalty:
            loss = loss + self.gradient_penalty * self.penalty(x, fake.detach())
        engine.update(loss, ("discriminator",))
        if generate:
            g_loss = -self.adversary.logits(fake).mean()
            engine.update(g_loss, ("model",))
            self.remember(generator_loss=g_loss)
        return {"critic_loss": loss.detach(), "critic_gap": gap.detach(), **self.recall()}

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        """f(x) - f(x_g) per datapoint, one generated x_g each: the critic's Wasserstein estimate."""
        fake = generated_x(programs, programs.model_side(x), self.generator_output)
        return self.adversary.logits(x) - self.adversary.logits(fake)

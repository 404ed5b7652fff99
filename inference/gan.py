r"""Generative adversarial networks in the unified view: a sleep phase on a reversed discriminator.

Goodfellow et al. (2014), "Generative Adversarial Nets"; read as in Hu, Yang, Salakhutdinov & Xing
(2018), "On Unifying Deep Generative Models" (arXiv:1706.00550), §3. With the indicator y (1 = data,
0 = generated), :math:`p_\theta(x \mid y=0) = p_{g_\theta}(x)` (the user's model, run on the model
side) and :math:`p_\theta(x \mid y=1) = p_{data}(x)` (the batch), two phases per step:

* **discriminator** (ψ): maximise :math:`\mathbb{E}_{p_\theta(x \mid y) p(y)}[\log q_\psi(y \mid x)]`
  — a sleep phase whose latent is y;
* **generator** (θ): maximise :math:`\mathbb{E}_{p_\theta(x \mid y) p(y)}[\log q^r_\psi(y \mid x)]`,
  the same program under :class:`~ppdgm.methods.adversarial.Reverse`. Only the y = 0 half depends on θ:
  it is :math:`\mathbb{E}_{p_g}[\log D(x)]`, the non-saturating loss (``generator_loss="nonsaturating"``).
  ``"minimax"`` instead minimises :math:`\mathbb{E}_{p_g}[\log q_\psi(y=0 \mid x)] = \mathbb{E}[\log(1 - D(x))]`.

Lemma 1 of the unified view: at θ₀ the generator's gradient is that of
:math:`\mathbb{E}_{p(y)}[\mathrm{KL}(p_\theta(x \mid y) \,\|\, q^r(x \mid y))]
- \mathrm{JSD}(p_\theta(x \mid 0) \,\|\, p_\theta(x \mid 1))`
with :math:`q^r(x \mid y) \propto q^r_{\psi_0}(y \mid x) p_{\theta_0}(x)` — a KL of the model *from*
the (reversed) posterior, as the sleep phase of wake-sleep minimises; hence GANs' mode missing.
"""

from __future__ import annotations

import torch

from ppdgm.errors import UsageError
from ppdgm.methods.adversarial import AdversarialMethod, generated_x
from ppdgm.methods.base import register
from ppdgm.methods.engine import Engine
from ppdgm.programs.batch import Data
from ppdgm.programs.pair import ProgramPair


@register
class GAN(AdversarialMethod):
    """GAN: discriminator on log q(y|x), generator on the reversed discriminator log q^r(y|x).

    ``method="gan"``. Options of :class:`~ppdgm.methods.adversarial.AdversarialMethod` plus

    Args:
        generator_loss: ``"nonsaturating"`` (the reversed discriminator, default) or ``"minimax"``.
    """

    name = "gan"
    accepts_columns = True
    players = ("model", "discriminator")
    objective_name = "gan_value"

    def __init__(self, generator_loss: str = "nonsaturating", **options) -> None:
        super().__init__(**options)
        if generator_loss not in ("nonsaturating", "minimax"):
            raise UsageError(f"generator_loss must be 'nonsaturating' or 'minimax', got {generator_loss!r}")
        self.generator_loss = generator_loss

    def options(self) -> dict:
        return {"generator_loss": self.generator_loss, **super().options()}

    def generate(self, programs: ProgramPair, rows: Data) -> torch.Tensor:
        """What the discriminator sees of x generated for ``rows`` (with its graph when the generator learns on it)."""
        return self.view(programs, generated_x(programs, programs.model_side(rows), self.generator_output), rows)

    def discriminator_rows(self, fake: torch.Tensor) -> torch.Tensor:
        """The generated rows the discriminator learns from."""
        return fake

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """-E_{p(x|y)p(y)}[log q_ψ(y | x)]: real rows with y = 1, generated rows with y = 0."""
        return -self.adversary.score(real, fake.detach())

    def generator_loss_of(self, fake: torch.Tensor) -> torch.Tensor:
        """The generator's loss on generated rows (their y is 0)."""
        if self.generator_loss == "nonsaturating":
            return -self.adversary.fooled(fake)
        return self.adversary.log_prob(fake, self.adversary.labels(fake.shape[0], 0, fake)).mean()

    def step(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        programs = engine.programs
        generate = self.generator_turn()
        with torch.set_grad_enabled(generate):
            fake = self.generate(programs, x)
        d_loss = self.discriminator_loss(self.view(programs, programs.observed_of(x), x), self.discriminator_rows(fake))
        engine.update(d_loss, ("discriminator",))
        if generate:
            g_loss = self.generator_loss_of(fake)
            engine.update(g_loss, ("model",))
            self.remember(generator_loss=g_loss)
        return {"discriminator_loss": d_loss.detach(), **self.recall()}

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        return self.gan_value(programs, x)

r"""Adversary activated VAE: the VAE objective with a learned, imperfect discriminator.

Hu, Yang, Salakhutdinov & Xing (2018), "On Unifying Deep Generative Models", §4-5. Lemma 2 writes
the VAE objective with the indicator y and a *perfect* discriminator q_*:

.. math::

    \mathcal{L}_{vae} = 2\, \mathbb{E}_{p_{\theta_0}(x)}\Big[
      \mathbb{E}_{q_\eta(z \mid x, y) q^r_*(y \mid x)}[\log p_\theta(x \mid z, y)]
      - \mathrm{KL}\big(q_\eta(z \mid x, y) q^r_*(y \mid x) \,\|\, p(z \mid y) p(y)\big)\Big],

with :math:`p_{\theta_0}(x) = \tfrac12 p_{\theta_0}(x \mid y=0) + \tfrac12 p_{data}(x)` the half-half mixture of
generated and real x. y = 0 is the model's branch (the decoder p_θ(x|z) with prior p(z), the
guide q_η(z|x)); the y = 1 branch is the data and holds no θ or η. The perfect q_* says "real" of
real x, so its reversal q^r_* puts real x on the model's branch with weight 1 and generated x with
weight 0: :math:`\mathcal{L}_{vae} = \mathbb{E}_{p_{data}}[\mathrm{ELBO}(x)]` + const.

AAVAE replaces q_* by the learned discriminator :math:`D(x) = q_\psi(y=1 \mid x)`, so that
:math:`q^r_\psi(y=0 \mid x) = D(x)` for every x. Expanding the expectation over y (the y = 1 terms and
the KL over y hold neither θ nor η once the weights are constants), the per-sample objective for B
real rows :math:`x_i` and B generated rows :math:`\tilde x_j \sim p_{\theta_0}(x \mid y=0)` is

.. math::

    \mathcal{L}_{aavae} = \frac1B \sum_i D(x_i)\, \mathrm{ELBO}(x_i)
      + \frac1B \sum_j D(\tilde x_j)\, \mathrm{ELBO}(\tilde x_j),

the factor 2 cancelling the mixture's ½. Generated samples the discriminator finds realistic are
learned from like data; real rows it finds fake count less. With D = 1 on real and 0 on generated
rows it is the plain VAE objective (tested exactly). The discriminator learns as in a GAN, on real
rows against the VAE's own samples (the x site sampled, so they lie in the likelihood's support).

**Data columns: the adversary-activated semi-supervised VAE (AA-SVAE).** With several columns — a
semi-supervised model's ``(x, y, labelled)``, whose label site is partially observed — a generated row is
the dream of every observed site (x̃ and its label ỹ, drawn together from the model) in the place of the
real row's, its inputs (the mask) kept; both ELBOs sum out enumerated labels exactly as ``vae`` does, and
the discriminator sees x beside the row's inputs. This is the semi-supervised extension of the paper's
§6.2, with D(x) weighting real and generated rows alike.
"""

from __future__ import annotations

import torch

from ppdgm.methods.adversarial import AdversarialMethod, generated_x
from ppdgm.methods.base import register
from ppdgm.methods.engine import Engine
from ppdgm.programs.batch import Data
from ppdgm.programs.pair import ProgramPair


@register
class AAVAE(AdversarialMethod):
    """Adversary activated VAE: ELBO of real and generated x, each weighted by D(x) from a learned discriminator.

    ``method="aavae"``.
    """

    name = "aavae"
    accepts_columns = True
    enumeration = "all"
    requires_guide = True
    needs_reparameterised_guide = True
    needs_likelihood = True
    needs_generator_gradient = False
    objective_name = "elbo"

    def realness(self, programs: ProgramPair, rows: Data) -> torch.Tensor:
        """D(x) = q^r(y=0 | x) per row (x beside the row's inputs), a constant weight."""
        with torch.no_grad():
            seen = self.view(programs, programs.observed_of(rows), rows)
            return self.adversary.log_prob(seen, self.adversary.labels(len(seen), 0, seen), reversed=True).exp()

    def weighted_elbo(self, programs: ProgramPair, x: Data, fake: Data) -> tuple[torch.Tensor, ...]:
        """L_aavae on real rows ``x`` and generated rows ``fake``; also the real rows' ELBO and weights."""
        elbo_real = programs.data_side(x, 1).elbo()
        elbo_fake = programs.data_side(fake, 1).elbo()
        w_real, w_fake = self.realness(programs, x), self.realness(programs, fake)
        objective = (w_real * elbo_real).mean() + (w_fake * elbo_fake).mean()
        return objective, elbo_real, w_real, w_fake

    def step(self, engine: Engine, x: Data) -> dict[str, torch.Tensor]:
        programs = engine.programs
        with torch.no_grad():
            dream = programs.model_side(x)
            fake = programs.dreamt_batch(
                dream, {programs.obs_site: generated_x(programs, dream, self.generator_output)}
            )
        real_seen = self.view(programs, programs.observed_of(x), x)
        d_loss = -self.adversary.score(real_seen, self.view(programs, programs.observed_of(fake), fake))
        engine.update(d_loss, ("discriminator",))
        if not self.generator_turn():
            return {"discriminator_loss": d_loss.detach(), **self.recall()}
        objective, elbo_real, w_real, w_fake = self.weighted_elbo(programs, x, fake)
        engine.update(-objective, ("model", "guide"))
        self.remember(
            aavae_objective=objective, elbo=elbo_real.mean(), weight_real=w_real.mean(), weight_generated=w_fake.mean()
        )
        return {"discriminator_loss": d_loss.detach(), **self.recall()}

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: Data) -> torch.Tensor:
        return programs.data_side(x, 1).elbo()

r"""Maximum likelihood for fully observed models.

For a model with no latent variables (an autoregressive model such as PixelCNN) the log-likelihood
is exact, and training maximises it directly:

.. math::

    \max_\theta \; \frac1B \sum_{i=1}^B \log p_\theta(x_i).

One data-side phase with no guide: the model is traced with x observed and scored.
"""

from __future__ import annotations

import torch

from ppdgm.methods.base import Method, register
from ppdgm.methods.engine import Engine
from ppdgm.programs.pair import ConventionError, ProgramPair


@register
class MLE(Method):
    """Maximum likelihood of a fully observed model (no guide): the exact log p(x).

    ``method="mle"``.
    """

    name = "mle"
    players = ("model",)
    requires_guide = False
    objective_name = "log_likelihood"

    def setup(self, programs: ProgramPair) -> None:
        latents = programs.structure.latent_sites
        if latents:
            raise ConventionError(
                f"method 'mle' needs a fully observed model, but latent site(s) {list(latents)} are not observed; "
                "use a method with a guide (vae, iwae, rws...) for latent-variable models"
            )

    def log_likelihood(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per datapoint."""
        trace = programs.model_trace(x)
        return programs.log_prob(trace, 1, len(x)).squeeze(0)

    def step(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        log_lik = self.log_likelihood(engine.programs, x)
        loss = -log_lik.mean()
        engine.update(loss, ("model",))
        return {"log_likelihood": -loss.detach()}

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        return self.log_likelihood(programs, x)

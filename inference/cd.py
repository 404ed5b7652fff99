r"""Contrastive divergence and persistent contrastive divergence for energy models (RBMs).

Hinton (2002), "Training Products of Experts by Minimizing Contrastive Divergence"; Tieleman (2008),
"Training Restricted Boltzmann Machines using Approximations to the Likelihood Gradient". The
log-likelihood gradient of an energy model :math:`p(v) = e^{-F(v)} / Z` is

.. math::

    \nabla \log p(v) = -\nabla F(v) + \mathbb{E}_{p(v')}[\nabla F(v')],

whose second (model) term is intractable. CD-k estimates it with the end of a k-step Gibbs chain
started at the data; PCD keeps the chains running across updates ("persistent" fantasy particles).
The surrogate loss is :math:`\frac1B\sum_i F(v_i) - \frac1B\sum_i F(\tilde v_i)` with the chain states
:math:`\tilde v` held fixed. The model must offer ``free_energy(v)`` and ``gibbs(v, steps)``
(see :class:`ppdgm.models.RBM`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ppdgm.errors import positive_int
from ppdgm.methods.base import Method, register
from ppdgm.methods.engine import Engine
from ppdgm.programs.pair import ConventionError, ProgramPair


@register
class CD(Method):
    """Contrastive divergence CD-k: Gibbs chains of k steps started at the data.

    ``method="cd"``.

    Args:
        k: Gibbs steps per update.
    """

    name = "cd"
    players = ("model",)
    requires_guide = False
    accepts_columns = False
    objective_name = "neg_free_energy"

    def __init__(self, k: int = 1) -> None:
        self.k = positive_int("k", k)
        self.chains: torch.Tensor | None = None

    def options(self) -> dict:
        return {"k": self.k}

    def setup(self, programs: ProgramPair) -> None:
        model = programs.model
        if not (callable(getattr(model, "free_energy", None)) and callable(getattr(model, "gibbs", None))):
            raise ConventionError(
                f"method {self.name!r} trains energy models offering free_energy(v) and gibbs(v, steps), e.g. "
                f"ppdgm.models.RBM; got a {type(model).__name__}"
            )
        self.chains = None

    def negative_samples(self, model, x: torch.Tensor) -> torch.Tensor:
        """The chain states standing in for samples of the model."""
        return model.gibbs(x, self.k)

    def step(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        model = engine.programs.model
        negative = self.negative_samples(model, x)
        positive_energy = model.free_energy(x).mean()
        loss = positive_energy - model.free_energy(negative).mean()
        engine.update(loss, ("model",))
        with torch.no_grad():
            reconstruction = (model.visible_probs(model.hidden_probs(x)) - x).pow(2).sum(-1).mean()
        return {"free_energy_gap": -loss.detach(), "reconstruction_error": reconstruction}

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        """-F(x): the log-likelihood up to the constant log Z."""
        return -programs.model.free_energy(x)


@register
class PCD(CD):
    """Persistent contrastive divergence: k Gibbs steps per update from chains that persist across updates.

    ``method="pcd"``. The chains start from the first batch and are saved in checkpoints.
    """

    name = "pcd"

    def negative_samples(self, model, x: torch.Tensor) -> torch.Tensor:
        if self.chains is None or self.chains.shape != x.shape:
            self.chains = x.detach().clone()
        self.chains = model.gibbs(self.chains, self.k)
        return self.chains

    def state_dict(self) -> dict:
        return {"chains": self.chains}

    def load_state_dict(self, state: Mapping) -> None:
        self.chains = state.get("chains")

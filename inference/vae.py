r"""Variational autoencoder: the AEVB / ELBO estimator.

Kingma & Welling (2014), "Auto-Encoding Variational Bayes"; Rezende et al. (2014). One data-side
phase moves the model θ and the guide φ together on the evidence lower bound

.. math::

    \mathcal{L}(x) = \mathbb{E}_{q_\phi(z \mid x)}\left[\log p_\theta(x, z) - \log q_\phi(z \mid x)\right]
    \le \log p_\theta(x),

estimated with K particles per datapoint (AEVB: K = 1). Reparameterisable latents give pathwise
gradients. Latents without a reparameterised sampler (e.g. Bernoulli) add the score-function term
:math:`(l - b)\,\nabla_\phi \log q_\phi(z \mid x)` with the NVIL baseline ``b``
(Mnih & Gregor 2014, see :mod:`ppdgm.inference.baselines`).

In the unified view (Hu et al. 2018, arXiv:1706.00550) this is the wake phase of wake-sleep
extended so that the guide learns in the wake phase too.

Sites marked ``infer={"enumerate": "parallel"}`` are summed out exactly, as Pyro's ``TraceEnum_ELBO``
does: a guide-enumerated discrete site y enters as :math:`\sum_y q_\phi(y \mid x)\,[\ldots]` (its
gradient exact, no score function), a model-enumerated one as :math:`\log \sum_y p_\theta(x, y, z)`.
"""

from __future__ import annotations

import torch

from ppdgm.errors import positive_int
from ppdgm.inference.baselines import NVILBaseline
from ppdgm.methods.base import Method, register
from ppdgm.methods.engine import Engine
from ppdgm.programs.combine import mean
from ppdgm.programs.pair import ConventionError, ProgramPair
from ppdgm.programs.sides import DataSide


@register
class VAE(Method):
    """ELBO (AEVB); NVIL score-function gradients for discrete latents.

    ``method="vae"`` (alias ``"elbo"``).

    Args:
        num_particles: K samples of the guide per datapoint, averaged.
        baseline_decay: decay of the NVIL running baseline (non-reparameterised latents only).
        baseline_net: optional input-dependent NVIL baseline network ``x -> (B,)``.
        variance_normalisation: scale the learning signal by its running standard deviation.
    """

    name = "vae"
    aliases = ("elbo",)
    players = ("model", "guide", "baseline")
    objective_name = "elbo"
    enumeration = "all"
    scores_auxiliary = True
    shares_parameters = True
    several_layouts = True

    def __init__(
        self,
        num_particles: int = 1,
        baseline_decay: float = 0.9,
        baseline_net: torch.nn.Module | None = None,
        variance_normalisation: bool = True,
    ) -> None:
        self.num_particles = positive_int("num_particles", num_particles)
        self.baseline = NVILBaseline(baseline_decay, baseline_net, variance_normalisation)

    def options(self) -> dict:
        return {"num_particles": self.num_particles, "baseline_decay": self.baseline.decay}

    def setup(self, programs: ProgramPair) -> None:
        structure = programs.structure
        if structure.guide_enumerated and structure.nonreparam_sites:
            raise ConventionError(
                f"vae sums out the enumerated site(s) {list(structure.guide_enumerated)} exactly but would need a "
                f"score-function estimator for {list(structure.nonreparam_sites)} beside them; enumerate those too "
                "or make them reparameterisable"
            )

    def extra_params(self) -> dict[str, list[torch.Tensor]]:
        return {"baseline": self.baseline.parameters()}

    def loss(self, programs: ProgramPair, x: torch.Tensor) -> tuple[torch.Tensor, DataSide, torch.Tensor]:
        """The surrogate loss of one data-side phase, the phase itself, and the ELBO per datapoint."""
        side = programs.data_side(x, self.num_particles)
        log_w = side.expected_log_weights
        elbo = mean(log_w)
        surrogate = elbo.mean()
        if side.log_q_nonreparam is not None:
            seen = programs.observed_of(x) if self.baseline.net is not None else None  # only a network reads x
            signal, baseline_loss = self.baseline.centred(log_w.detach(), seen)
            surrogate = surrogate + (signal * side.log_q_nonreparam).mean() - baseline_loss
        return -surrogate, side, elbo.detach()

    def step(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loss, _, elbo = self.loss(engine.programs, x)
        return self.update_with_auxiliary(engine, loss, x, {"elbo": elbo.mean()})

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        return programs.data_side(x, self.num_particles).elbo()

    def state_dict(self) -> dict:
        return {"baseline": self.baseline.state_dict()}

    def load_state_dict(self, state) -> None:
        self.baseline.load_state_dict(state["baseline"])

r"""Wake-sleep.

Hinton, Dayan, Frey & Neal (1995), "The wake-sleep algorithm for unsupervised neural networks".
Two phases per step, each moving one player:

* **wake** (data side): x from the data, :math:`h \sim q_\phi(h \mid x)`; the model maximises
  :math:`\mathbb{E}_{q_\phi(h \mid x)}[\log p_\theta(x, h)]` — θ only, the guide runs without a graph;
* **sleep** (model side): :math:`(h, x) \sim p_\theta` is dreamt; the guide maximises
  :math:`\mathbb{E}_{p_\theta(h, x)}[\log q_\phi(h \mid x)]` — φ only, on the dreamt x, with the
  same guide program that reads the data in the wake phase.

The phases run in that order, the sleep phase dreaming from the freshly updated model. The wake
phase minimises KL(q ‖ p(h|x)) in θ like the ELBO; the sleep phase minimises the *reversed*
KL(p_θ(h|x) ‖ q_φ) averaged over the model's own x — in the unified view (Hu et al. 2018,
arXiv:1706.00550) VAEs extend the wake phase and GANs the sleep phase. No gradient passes through
a sample, so discrete latents need no special treatment.
"""

from __future__ import annotations

import torch

from ppdgm.errors import positive_int
from ppdgm.methods.base import Method, register
from ppdgm.methods.engine import Engine
from ppdgm.programs.batch import Data
from ppdgm.programs.combine import mean
from ppdgm.programs.pair import ProgramPair


@register
class WakeSleep(Method):
    """Wake-sleep: the wake phase moves the model, the sleep phase moves the guide on dreams.

    ``method="ws"`` (alias ``"wake-sleep"``).

    Args:
        num_particles: guide samples per datapoint in the wake phase (averaged).
    """

    name = "ws"
    aliases = ("wake-sleep",)
    objective_name = "elbo"
    enumeration = "model"

    def __init__(self, num_particles: int = 1) -> None:
        self.num_particles = positive_int("num_particles", num_particles)

    def options(self) -> dict:
        return {"num_particles": self.num_particles}

    def setup(self, programs: ProgramPair) -> None:
        programs.check_sleep()

    def wake_loss(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        """-E_q[log p(x, h)] averaged over the batch; gradients reach the model only."""
        side = programs.data_side(x, self.num_particles, guide_grad=False)
        return -mean(side.log_p).mean()

    def sleep_loss(self, programs: ProgramPair, rows: int | Data) -> torch.Tensor:
        """-log q(h | x) on dreamt (h, x), averaged; gradients reach the guide only.

        ``rows``: the batch whose inputs the dream keeps, or a number of rows."""
        with torch.no_grad():
            dream = programs.model_side(rows)
        return -programs.score_guide(dream)[1].mean()

    def step(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        wake = self.wake_loss(engine.programs, x)
        engine.update(wake, ("model",))
        sleep = self.sleep_loss(engine.programs, x)
        engine.update(sleep, ("guide",))
        return {"wake_log_joint": -wake.detach(), "sleep_log_q": -sleep.detach()}

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        return programs.data_side(x, self.num_particles).elbo()

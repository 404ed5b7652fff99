r"""Reweighted wake-sleep.

Bornschein & Bengio (2015), "Reweighted Wake-Sleep". K guide samples :math:`h_k \sim q_\phi(h \mid x)`
per datapoint with importance weights :math:`w_k = p_\theta(x, h_k) / q_\phi(h_k \mid x)`,
self-normalised **within each datapoint**: :math:`\tilde w_k = w_k / \sum_j w_j`. Then

* **wake-θ**: :math:`\nabla_\theta \approx \sum_k \tilde w_k \nabla_\theta \log p_\theta(x, h_k)`
  (the gradient of the IWAE bound in θ);
* **wake-φ**: :math:`\nabla_\phi \approx \sum_k \tilde w_k \nabla_\phi \log q_\phi(h_k \mid x)`, a
  step towards the posterior in KL(p(h|x) ‖ q);
* **sleep-φ**: :math:`\nabla_\phi \log q_\phi(h \mid x)` on :math:`(h, x)` dreamt from the model, as
  in wake-sleep.

The guide's update is :math:`(1 - s)\,\text{wake-}\phi + s\,\text{sleep-}\phi` with
``sleep_fraction`` s in [0, 1] (Bornschein & Bengio found both phases together best). All the
gradients are taken at the current parameters and applied in one update. No gradient passes
through a sample: the latents are scored at fixed values.

Pyro's ``ReweightedWakeSleep`` normalises the weights across the whole minibatch; here each
datapoint's K weights are normalised among themselves, which is what the estimator means for
minibatch training (tested against a hand-computed formula).
"""

from __future__ import annotations

import torch

from ppdgm.errors import UsageError, positive_int
from ppdgm.methods.base import Method, register
from ppdgm.methods.engine import Engine
from ppdgm.programs.combine import log_mean_exp, self_normalised_weights
from ppdgm.programs.pair import ProgramPair


@register
class RWS(Method):
    """Reweighted wake-sleep: K self-normalised weights per datapoint; wake-phi and/or sleep-phi.

    ``method="rws"``.

    Args:
        num_particles: K, importance samples per datapoint.
        sleep_fraction: weight s of the sleep-φ update in the guide's update; 0 is wake-φ only,
            1 is sleep-φ only.
    """

    name = "rws"
    objective_name = "iwae_bound"
    enumeration = "model"

    def __init__(self, num_particles: int = 5, sleep_fraction: float = 0.5) -> None:
        if not 0.0 <= sleep_fraction <= 1.0:
            raise UsageError(f"sleep_fraction must be in [0, 1], got {sleep_fraction!r}")
        self.num_particles = positive_int("num_particles", num_particles)
        self.sleep_fraction = float(sleep_fraction)

    def options(self) -> dict:
        return {"num_particles": self.num_particles, "sleep_fraction": self.sleep_fraction}

    def setup(self, programs: ProgramPair) -> None:
        if self.sleep_fraction > 0:
            programs.check_sleep()

    def loss(self, programs: ProgramPair, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The surrogate whose gradient is wake-θ for the model and the wake/sleep mixture for the guide."""
        s = self.sleep_fraction
        side = programs.data_side(x, self.num_particles, detach_latents=True)
        log_w = side.log_weights
        weights = self_normalised_weights(log_w.detach())  # (K, B): each column sums to one
        wake_theta = (weights * side.log_p).sum(0).mean()
        surrogate = wake_theta
        metrics = {"iwae_bound": log_mean_exp(log_w.detach(), 0).mean()}
        if s < 1:
            surrogate = surrogate + (1 - s) * (weights * side.log_q).sum(0).mean()
        if s > 0:
            with torch.no_grad():
                dream = programs.model_side(x)
            sleep_log_q = programs.score_guide(dream)[1].mean()
            surrogate = surrogate + s * sleep_log_q
            metrics["sleep_log_q"] = sleep_log_q.detach()
        return -surrogate, metrics

    def step(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loss, metrics = self.loss(engine.programs, x)
        engine.update(loss, self.players)
        return metrics

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        return programs.data_side(x, self.num_particles).iwae_bound()

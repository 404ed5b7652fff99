r"""Importance weighted autoencoder.

Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders". One data-side phase with
K particles per datapoint maximises the tighter bound

.. math::

    \mathcal{L}_K(x) = \mathbb{E}_{z_{1:K} \sim q_\phi(z \mid x)}
        \left[\log \frac{1}{K} \sum_{k=1}^K w_k\right], \qquad
    w_k = \frac{p_\theta(x, z_k)}{q_\phi(z_k \mid x)},

with :math:`\mathcal{L}_1 \le \mathcal{L}_K \le \mathcal{L}_{K+1} \le \log p_\theta(x)`. The weights
are normalised over the K particles of each datapoint, never across the minibatch — unless the pair has global
sites (latents outside the data plate, or an AutoGuide's one latent vector): then a particle's weight is that of
the whole batch, :math:`\log \frac{1}{K} \sum_k \prod_i w_{k,i}`, as Pyro's ``RenyiELBO(alpha=0)`` computes it.
The model gradient is :math:`\sum_k \tilde w_k \nabla_\theta \log p_\theta(x, z_k)`, with
:math:`\tilde w_k = w_k / \sum_j w_j`.

Guide gradients (``guide_gradient``):

* ``"reparam"`` — the pathwise gradient of :math:`\mathcal{L}_K`.
* ``"dreg"`` — doubly reparameterised (Tucker, Lawson, Gu & Maddison 2019, "Doubly Reparameterized
  Gradient Estimators for Monte Carlo Objectives"):
  :math:`\sum_k \tilde w_k^2 \, \frac{\partial \log w_k}{\partial z_k} \frac{\partial z_k}{\partial \phi}`,
  with :math:`\log q` evaluated at stopped parameters. It is unbiased for the same gradient and
  its signal-to-noise ratio does not vanish as K grows. Implemented with one backward pass: the
  surrogate :math:`\sum_k \tilde w_k \log w_k` (stopped-φ weights) gives the model its IWAE
  gradient, and a gradient hook multiplies the gradient reaching each :math:`z_k` by
  :math:`\tilde w_k` once more.

Enumerated sites (``infer={"enumerate": "parallel"}``) are summed inside each weight:
:math:`w_k = \sum_y p_\theta(x, y, z_k^y) / q_\phi(z_k^y \mid x, y)` for a guide-enumerated y (the
other latents drawn for every value of y), :math:`w_k = \sum_y p_\theta(x, y, z_k) / q_\phi(z_k \mid x)`
for a model-enumerated one; each :math:`w_k` is unbiased for p(x), so :math:`\mathcal{L}_K` stays a
lower bound.

Latents without a reparameterised sampler get the VIMCO score-function term with leave-one-out
baselines (Mnih & Rezende 2016, "Variational Inference for Monte Carlo Objectives").
"""

from __future__ import annotations

import torch

from ppdgm.errors import UsageError, positive_int
from ppdgm.methods.base import Method, register
from ppdgm.methods.engine import Engine
from ppdgm.programs.combine import log_mean_exp, self_normalised_weights
from ppdgm.programs.pair import ProgramPair
from ppdgm.programs.sides import DataSide
from ppdgm.runtime import distributed

_GUIDE_GRADIENTS = ("reparam", "dreg")


@register
class IWAE(Method):
    """Importance weighted bound L_K, weights per datapoint; pathwise or DReG guide gradients.

    ``method="iwae"``.

    Args:
        num_particles: K, the number of importance samples per datapoint.
        guide_gradient: ``"reparam"`` or ``"dreg"``.
    """

    name = "iwae"
    objective_name = "iwae_bound"
    enumeration = "all"
    scores_auxiliary = True
    shares_parameters = True
    several_layouts = True

    def __init__(self, num_particles: int = 5, guide_gradient: str = "reparam") -> None:
        if guide_gradient not in _GUIDE_GRADIENTS:
            raise UsageError(f"guide_gradient must be one of {_GUIDE_GRADIENTS}, got {guide_gradient!r}")
        self.num_particles = positive_int("num_particles", num_particles)
        self.guide_gradient = guide_gradient

    def options(self) -> dict:
        return {"num_particles": self.num_particles, "guide_gradient": self.guide_gradient}

    def setup(self, programs: ProgramPair) -> None:
        structure = programs.structure
        if structure.global_sites and distributed.world_size() > 1:
            raise UsageError(
                f"iwae's bound with the global site(s) {list(structure.global_sites)} weighs each particle by the "
                "whole batch, which a data-parallel fit splits over ranks; train it in one process (or with vae, "
                "whose ELBO adds up over ranks)"
            )
        if structure.nonreparam_sites and self.guide_gradient == "dreg":
            raise UsageError(
                f"guide_gradient='dreg' needs reparameterisable latents; sites {list(structure.nonreparam_sites)} "
                "are not (use guide_gradient='reparam', which adds the VIMCO score-function term)"
            )
        if structure.global_sites and self.guide_gradient == "dreg":
            raise UsageError(
                f"guide_gradient='dreg' weighs each datapoint's particles; the global site(s) "
                f"{list(structure.global_sites)} give one weight per particle for the whole batch (use "
                "guide_gradient='reparam')"
            )
        if structure.auxiliary_sites and self.guide_gradient == "dreg":
            raise UsageError(
                f"guide_gradient='dreg' scales the gradient reaching each sampled value once per particle; the guide's "
                f"auxiliary site(s) {list(structure.auxiliary_sites)} feed its latents, so their gradients would be "
                "scaled twice (use guide_gradient='reparam')"
            )
        if structure.guide_enumerated and (self.guide_gradient == "dreg" or structure.nonreparam_sites):
            raise UsageError(
                f"iwae sums out the enumerated site(s) {list(structure.guide_enumerated)} with "
                "guide_gradient='reparam' and reparameterisable other latents only"
            )
        if structure.nonreparam_sites and self.num_particles < 2:
            raise UsageError("IWAE with non-reparameterisable latents (VIMCO) needs num_particles >= 2")

    def loss(self, programs: ProgramPair, x: torch.Tensor) -> tuple[torch.Tensor, DataSide, torch.Tensor]:
        """The surrogate loss of one data-side phase, the phase itself, and the bound per datapoint."""
        side = programs.data_side(x, self.num_particles)
        bound = side.iwae_bound()
        rows = bound.shape[0]
        if self.guide_gradient == "dreg":
            surrogate = self._dreg_surrogate(programs, side, rows)
        else:
            surrogate = bound.sum()
            if side.log_q_nonreparam is not None:
                log_w = side.log_weights.detach()
                if programs.structure.global_sites:  # one weight per particle for the whole batch
                    log_w = log_w.sum(-1, keepdim=True)
                surrogate = surrogate + (vimco_signal(log_w) * side.log_q_nonreparam).sum()
        return -surrogate / rows, side, bound.detach()

    def step(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loss, _, bound = self.loss(engine.programs, x)
        return self.update_with_auxiliary(engine, loss, x, {"iwae_bound": bound.mean()})

    def _dreg_surrogate(self, programs: ProgramPair, side: DataSide, batch_size: int) -> torch.Tensor:
        structure = side.structure
        log_q_stopped = programs.log_prob(
            side.guide_trace, self.num_particles, batch_size, sites=side.sites.scored, detach_params=True
        )
        log_w = side.log_p - log_q_stopped
        weights = self_normalised_weights(log_w.detach())
        rank = structure.max_plate_nesting + 1
        for name in side.sites.reparam if self.num_particles > 1 else ():
            site = side.guide_trace.nodes[name]
            z = site["value"]
            if z.requires_grad:
                z.register_hook(_scale_by(weights, site, structure.data_plate, rank))
        return (weights * log_w).sum()

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        return programs.data_side(x, self.num_particles).iwae_bound()


def vimco_signal(log_w: torch.Tensor) -> torch.Tensor:
    """VIMCO learning signal per particle: L_K minus the leave-one-out baseline, shape ``(K, B)``.

    The baseline of particle k is L_K with log w_k replaced by the mean of the other K-1 log weights.
    """
    num = log_w.shape[0]
    others_mean = (log_w.sum(0, keepdim=True) - log_w) / (num - 1)
    replaced = log_w.unsqueeze(0).expand(num, *log_w.shape).clone()
    idx = torch.arange(num, device=log_w.device)
    replaced[idx, idx] = others_mean
    return log_mean_exp(log_w, 0).unsqueeze(0) - log_mean_exp(replaced, 1)


def _scale_by(weights: torch.Tensor, site: dict, data_plate: str, rank: int):
    """A gradient hook multiplying a latent's gradient by its particle's normalised weight."""
    value = site["value"]
    event_dim = site["fn"].event_dim
    batch_dims = value.dim() - event_dim
    shape = [1] * value.dim()
    shape[batch_dims - rank] = weights.shape[0]
    data_dim = next((f.dim for f in site["cond_indep_stack"] if f.name == data_plate), None)
    if data_dim is not None:
        shape[batch_dims + data_dim] = weights.shape[1]
        factor = weights.reshape(shape)
    else:
        factor = weights.mean(1).reshape(shape)
    return lambda grad: grad * factor

r"""Generative moment matching networks: the generator trained by maximum mean discrepancy.

Li, Swersky & Zemel (2015), "Generative Moment Matching Networks"; Dziugaite, Roy & Ghahramani
(2015), "Training generative neural networks via Maximum Mean Discrepancy optimization".
One model-side phase per step: minimise the squared MMD between the batch and as many generated
rows, with a sum of Gaussian kernels

.. math::

    \mathrm{MMD}^2 = \mathbb{E}[k(x, x')] + \mathbb{E}[k(\tilde x, \tilde x')] - 2\,\mathbb{E}[k(x, \tilde x)],
    \qquad k(a, b) = \sum_\sigma \exp\!\left(-\frac{\lVert a - b \rVert^2}{2\sigma^2}\right).

In the unified view the discriminator is replaced by a fixed kernel two-sample test: no ψ player.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ppdgm.errors import UsageError
from ppdgm.methods.adversarial import check_generator, gaussian_mmd2, generated_x, generator_output_option
from ppdgm.methods.base import Method, register
from ppdgm.methods.engine import Engine
from ppdgm.programs.pair import ProgramPair


@register
class GMMN(Method):
    """GMMN: the generator minimises MMD² to the data under a mixture of Gaussian kernels.

    ``method="gmmn"`` (alias ``"mmd"``).

    Args:
        bandwidths: the kernels' σ; ``None`` (default) takes ``scales`` times the median distance
            between the batch's rows, recomputed per batch.
        scales: multipliers of the median distance when ``bandwidths`` is ``None``.
        generator_output: ``"sample"`` (the x site's value) or ``"mean"`` (its distribution's mean).
    """

    name = "gmmn"
    aliases = ("mmd",)
    players = ("model",)
    requires_guide = False
    objective_name = "neg_mmd2"

    def __init__(
        self,
        bandwidths: Sequence[float] | None = None,
        scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
        generator_output: str = "sample",
    ) -> None:
        if bandwidths is not None and (not len(bandwidths) or min(bandwidths) <= 0):
            raise UsageError(f"bandwidths must be positive, got {bandwidths!r}")
        self.bandwidths = None if bandwidths is None else tuple(float(b) for b in bandwidths)
        self.scales = tuple(float(s) for s in scales)
        self.generator_output = generator_output_option(generator_output)

    def options(self) -> dict:
        return {"bandwidths": self.bandwidths, "scales": self.scales, "generator_output": self.generator_output}

    def setup(self, programs: ProgramPair) -> None:
        check_generator(programs, programs.model_side(2), self.generator_output, self.name)

    def loss(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        fake = generated_x(programs, programs.model_side(x), self.generator_output)
        return gaussian_mmd2(x, fake, self.bandwidths, self.scales)

    def step(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = self.loss(engine.programs, x)
        engine.update(loss, ("model",))
        return {"mmd2": loss.detach()}

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        """-MMD² of the batch against as many generated rows (the same value for every datapoint)."""
        return (-self.loss(programs, x)).expand(len(x))

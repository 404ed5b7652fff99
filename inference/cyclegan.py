r"""CycleGAN: two GANs between unpaired domains, tied by cycle consistency.

Zhu, Park, Isola & Efros (2017), "Unpaired Image-to-Image Translation using Cycle-Consistent
Adversarial Networks". Translators :math:`G_{AB}: A \to B`, :math:`G_{BA}: B \to A` and a
discriminator per domain. In the unified view each translator is a GAN generator whose "noise" is
a row of the other domain, trained on its domain's reversed discriminator exactly as ``gan``:

* **discriminators** (ψ): maximise :math:`\log q_B(1 \mid b) + \log q_B(0 \mid G_{AB}(a))` and the same for A;
* **translators** (θ): maximise :math:`\log q^r_B(0 \mid G_{AB}(a)) + \log q^r_A(0 \mid G_{BA}(b))
  - \lambda\,(\lVert G_{BA}(G_{AB}(a)) - a \rVert_1 + \lVert G_{AB}(G_{BA}(b)) - b \rVert_1)`.

The model is :class:`ppdgm.models.CycleTranslators`; the data are rows ``[a | b]`` of unrelated A and
B rows (:func:`ppdgm.data.unpaired`).
"""

from __future__ import annotations

from typing import Any

import torch

from ppdgm.methods.adversarial import Adversary, as_discriminator, default_discriminator
from ppdgm.methods.base import Method, register
from ppdgm.methods.engine import Engine
from ppdgm.programs.pair import ConventionError, ProgramPair


@register
class CycleGAN(Method):
    """CycleGAN: per-domain discriminators (reversed for the translators) plus the cycle-consistency loss.

    ``method="cyclegan"``.

    Args:
        cycle_weight: λ, the weight of the cycle-consistency (L1) loss.
        discriminators: optional pair of discriminator programs or networks (domain A, domain B).
    """

    name = "cyclegan"
    players = ("model", "discriminator")
    requires_guide = False
    accepts_columns = False
    objective_name = "cycle_error"

    def __init__(self, cycle_weight: float = 10.0, discriminators: tuple[Any, Any] | None = None) -> None:
        self.cycle_weight = float(cycle_weight)
        self.user_discriminators = discriminators
        self.adversaries: tuple[Adversary, Adversary] | None = None

    def options(self) -> dict:
        return {"cycle_weight": self.cycle_weight}

    def setup(self, programs: ProgramPair) -> None:
        model = programs.model
        if not all(hasattr(model, attr) for attr in ("ab", "ba", "split", "translate")):
            raise ConventionError(
                "method 'cyclegan' trains a pair of translators (ppdgm.models.CycleTranslators); "
                f"got {type(model).__name__}"
            )
        a, b = model.split(programs.example[:4])
        if self.user_discriminators is None:
            programs_ = (
                default_discriminator(a.shape[-1], name="discriminator_a"),
                default_discriminator(b.shape[-1], name="discriminator_b"),
            )
        else:
            names = ("discriminator_a", "discriminator_b")
            programs_ = tuple(as_discriminator(d, name) for d, name in zip(self.user_discriminators, names))
        self.discriminator_programs = programs_
        self.adversaries = (Adversary(programs_[0]), Adversary(programs_[1]))
        self.adversaries[0].inspect(a)
        self.adversaries[1].inspect(b)

    def extra_players(self) -> dict[str, tuple[str, ...]]:
        return {"discriminator": self.adversaries[0].param_names + self.adversaries[1].param_names}

    def modules(self) -> list[torch.nn.Module]:
        return [d for d in self.discriminator_programs if isinstance(d, torch.nn.Module)]

    def translations(self, model, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a, b = model.split(x)
        return a, b, model.translate(model.ab, a), model.translate(model.ba, b)

    def cycle_error(self, model, a, b, fake_b, fake_a) -> torch.Tensor:
        """Mean L1 cycle error per row: |G_BA(G_AB(a)) - a| + |G_AB(G_BA(b)) - b|, summed over features."""
        back_a = model.translate(model.ba, fake_b)
        back_b = model.translate(model.ab, fake_a)
        return (back_a - a).abs().sum(-1) + (back_b - b).abs().sum(-1)

    def step(self, engine: Engine, x: torch.Tensor) -> dict[str, torch.Tensor]:
        model = engine.programs.model
        disc_a, disc_b = self.adversaries
        a, b, fake_b, fake_a = self.translations(model, x)
        d_loss = -(disc_b.score(b, fake_b.detach()) + disc_a.score(a, fake_a.detach()))
        engine.update(d_loss, ("discriminator",))
        fooled = disc_b.fooled(fake_b) + disc_a.fooled(fake_a)
        cycle = self.cycle_error(model, a, b, fake_b, fake_a).mean()
        engine.update(-fooled + self.cycle_weight * cycle, ("model",))
        return {
            "discriminator_loss": d_loss.detach(),
            "translators_fool": fooled.detach(),
            "cycle_error": cycle.detach(),
        }

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: torch.Tensor) -> torch.Tensor:
        """Minus the cycle error per row (higher is better)."""
        return -self.cycle_error(programs.model, *self.translations(programs.model, x))

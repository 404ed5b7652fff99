"""The base class of every method, and the method registry."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import torch

from ppdgm.errors import UsageError
from ppdgm.methods.engine import Engine
from ppdgm.programs.batch import Data
from ppdgm.programs.pair import ConventionError, ProgramPair


class Method:
    """Base class of a training algorithm: a few phases over a program pair.

    Subclasses set ``name`` (the registered name), ``players`` (the players they step) and
    implement :meth:`step`. State that must survive a checkpoint (baselines, counters) goes in
    :meth:`state_dict` / :meth:`load_state_dict`.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    players: ClassVar[tuple[str, ...]] = ("model", "guide")
    requires_guide: ClassVar[bool] = True
    partial_guide: ClassVar[bool] = False
    objective_name: ClassVar[str] = "objective"
    #: trains on data of several columns (a :class:`~ppdgm.programs.batch.Batch`), not only a tensor of rows
    accepts_columns: ClassVar[bool] = True
    #: enumerated sites the method sums out: ``"all"``, ``"model"`` (model-side enumeration only) or ``"none"``
    enumeration: ClassVar[str] = "none"
    #: ``True``, or why the method's step always runs eagerly (see :mod:`ppdgm.compile.step`)
    compilable: ClassVar[bool | str] = True
    #: trains on the joint score of every guide site, auxiliary ones included (guide sites with no model site, such
    #: as an AutoGuide's); a method that hands latents to the guide (sleep phases) or reads q(z | x) alone cannot
    scores_auxiliary: ClassVar[bool] = False
    #: trains every parameter on one loss, so one parameter used by both programs is well defined
    shares_parameters: ClassVar[bool] = False
    #: trains on batches of several layouts in one fit (labelled ``(xs, ys)`` and unlabelled ``xs``), each scored
    #: with its own trace's sites; adds auxiliary losses (``fit(auxiliary=...)``) to its one loss
    several_layouts: ClassVar[bool] = False

    def setup(self, programs: ProgramPair) -> None:
        """Called once after the program pair is inspected; check the method can train it."""

    def check_programs(self, programs: ProgramPair) -> None:
        """Refuse, naming the sites, what the method cannot train: enumerated sites it does not sum out."""
        structure = programs.structure
        refused = structure.enumerated if self.enumeration == "none" else ()
        if self.enumeration == "model":
            refused = structure.guide_enumerated
        if structure.shared_param_names and not self.shares_parameters:
            shared = sorted(structure.shared_param_names)
            raise ConventionError(
                f"parameters {shared[:5]}{' ...' if len(shared) > 5 else ''} are used by both the model and the "
                f"guide; method {self.name!r} steps the model and the guide as separate players, each on its own "
                "loss, so each must own its parameters (rename the guide's: the name given to pyro.module, or for a "
                "PyroModule its attribute names). vae and iwae, which train both on one loss, accept shared parameters"
            )
        if programs.auxiliary and not self.several_layouts:
            raise ConventionError(
                f"method {self.name!r} has no one loss to add the auxiliary pair(s) to (it steps players on losses of "
                "their own); vae and iwae add their ELBOs to theirs"
            )
        if structure.auxiliary_sites and not self.scores_auxiliary:
            raise ConventionError(
                f"method {self.name!r} cannot train a guide with auxiliary site(s) {list(structure.auxiliary_sites)} "
                "(guide sample sites with no model site, e.g. an AutoGuide's): it needs q(z | x) of the model's "
                "latents alone. Use vae or iwae, which score every guide site as Pyro's ELBOs do"
            )
        if refused:
            allowed = {"model": "only sites enumerated in the model (not in the guide)", "none": "no enumeration"}
            raise ConventionError(
                f"method {self.name!r} cannot sum out the enumerated site(s) {list(refused)}: it supports "
                f"{allowed[self.enumeration]}. Use vae or iwae, which sum them out exactly, or remove the "
                "enumerate annotation"
            )

    def extra_params(self) -> dict[str, list[torch.Tensor]]:
        """Parameters the method itself owns (e.g. a baseline network), per player."""
        return {}

    def extra_players(self) -> dict[str, tuple[str, ...]]:
        """Players of Pyro programs the method brings (e.g. a discriminator): param-store names per player."""
        return {}

    def modules(self) -> list[torch.nn.Module]:
        """Modules the method owns, moved to the training device with the programs."""
        return []

    def step(self, engine: Engine, x: Data) -> dict[str, torch.Tensor]:
        """One training step on a batch ``x``; returns detached scalar metrics (kept on device)."""
        raise NotImplementedError

    def update_with_auxiliary(
        self, engine: Engine, loss: torch.Tensor, x: Data, metrics: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Step the players on ``loss`` plus the auxiliary pairs' loss on ``x`` (``fit(auxiliary=...)``, methods with
        :attr:`several_layouts`), adding ``auxiliary_loss`` to ``metrics`` when there are auxiliary pairs."""
        auxiliary = engine.programs.auxiliary_loss(x)
        if auxiliary is None:
            engine.update(loss, self.players)
            return metrics
        engine.update(loss + auxiliary, self.players)
        return {**metrics, "auxiliary_loss": auxiliary.detach()}

    @torch.no_grad()
    def objective(self, programs: ProgramPair, x: Data) -> torch.Tensor:
        """The quantity the method maximises, per datapoint (shape ``(B,)``), for validation."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """State that must survive a checkpoint; its tensors are the live ones (a compiled step carries them)."""
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        del state

    def compiled_key(self) -> Hashable:
        """What the next step's control flow depends on beyond shapes (a compiled step is recorded per key)."""
        return None

    def after_replay(self) -> None:
        """Python-side bookkeeping of a step replayed from its recording (which replays tensor operations only)."""

    def options(self) -> dict[str, Any]:
        """The constructor options, for run records."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: register a method under its ``name`` and ``aliases``."""
    for key in (cls.name, *cls.aliases):
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise UsageError(f"method name {key!r} is already registered to {_REGISTRY[key].__name__}")
        _REGISTRY[key] = cls
    return cls


def _ensure_builtin_methods() -> None:
    import ppdgm.inference  # noqa: F401  (registers the built-in methods)


def available_methods() -> dict[str, type[Method]]:
    """Registered methods by primary name."""
    _ensure_builtin_methods()
    return {cls.name: cls for cls in dict.fromkeys(_REGISTRY.values())}


def get_method(method: str | Method, **options: Any) -> Method:
    """A method instance from a registered name (with options) or an instance (options must be empty)."""
    if isinstance(method, Method):
        if options:
            raise UsageError(
                f"options {sorted(options)} were given with a method instance; pass them to its constructor"
            )
        return method
    if not isinstance(method, str):
        raise UsageError(f"method must be a name or a ppdgm Method, got {type(method).__name__}")
    _ensure_builtin_methods()
    cls = _REGISTRY.get(method.lower())
    if cls is None:
        known = ", ".join(sorted(available_methods()))
        raise UsageError(f"unknown method {method!r}; known methods: {known}")
    try:
        return cls(**options)
    except UsageError:
        raise
    except TypeError as err:
        raise UsageError(f"bad options for method {cls.name!r}: {err}") from None

"""The result of a fit: :class:`Run`, and loading saved parameters into a pair."""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch

from ppdgm.data.dataset import Dataset
from ppdgm.errors import UsageError
from ppdgm.methods.base import Method
from ppdgm.methods.engine import Engine
from ppdgm.programs.batch import Data
from ppdgm.programs.handlers import unconstrained_params
from ppdgm.programs.pair import ProgramPair
from ppdgm.runtime import storage as checkpoints


@dataclass
class Run:
    """The result of :func:`fit`: the trained pair, its history and the means to save and reload it.

    Attributes:
        history: one dict per epoch (``epoch``, ``step``, ``seconds``, ``train_*`` and ``valid_*`` metrics).
        param_state: the run's Pyro param-store state (names to tensors); see :meth:`params`.
        config: the options of the fit, for run records.
    """

    model: Callable
    guide: Callable | None
    method: Method
    programs: ProgramPair
    engine: Engine
    dataset: Dataset
    device: torch.device
    config: dict
    history: list[dict] = field(default_factory=list)
    param_state: Any = field(default_factory=dict)
    seconds: float = 0.0
    #: the step the fit ran (:class:`~ppdgm.compile.step.CompiledStep`): ``run.stepper(x)`` takes one more
    stepper: Any = None

    @property
    def train_data(self) -> Data:
        return self.dataset.train

    @property
    def valid_data(self) -> Data:
        return self.dataset.valid

    @property
    def test_data(self) -> Data:
        return self.dataset.test

    @contextlib.contextmanager
    def params(self) -> Iterator[Any]:
        """Make this run's parameters the active Pyro param store inside the ``with`` block."""
        with pyro.get_param_store().scope(self.param_state) as state:
            yield state

    def state(self) -> dict:
        """Trained parameters by player (as named in the param store) with the config and history."""
        players = {
            name: dict(zip(player.param_names, (p.detach().cpu() for p in player.params)))
            for name, player in self.engine.players.items()
        }
        return {"players": players, "config": self.config, "history": self.history}

    def save(self, path: str | Path) -> None:
        """Write the trained parameters, config and history to ``path`` (atomically)."""
        checkpoints.save(self.state(), path)

    def save_history(self, path: str | Path) -> None:
        """Write the per-epoch history as CSV (one row per epoch)."""
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        with checkpoints.atomic_path(path, "history") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)


def load_params(path: str | Path, programs: ProgramPair, example: Data) -> dict:
    """Load parameters written by :meth:`Run.save` into the modules of ``programs``.

    The programs are traced once on ``example`` (a batch of data) in a fresh param-store scope, so
    that the names find the tensors the modules really use; values are copied in place.
    Returns the saved record (config and history).
    """
    saved = checkpoints.load(path, "parameter file", "train the run again")
    with pyro.get_param_store().scope() as state:
        structure = programs.inspect(example)
        store = unconstrained_params()
        wanted = set(structure.model_param_names) | set(structure.guide_param_names)
        found = {n: v for player in saved["players"].values() for n, v in player.items() if n in wanted}
        missing = sorted(wanted - set(found))
        if missing:
            raise UsageError(f"{path} has no values for parameters {missing}: written for another model or guide?")
        with torch.no_grad():
            for name, value in found.items():
                target = store[name]
                if target.shape != value.shape:
                    raise UsageError(
                        f"parameter {name!r}: saved shape {tuple(value.shape)}, model has {tuple(target.shape)}"
                    )
                target.copy_(value.to(target.device))
    pyro.get_param_store().set_state(state)
    return saved


def move_programs(
    programs: ProgramPair, names: Sequence[str], device: torch.device, modules: Sequence[torch.nn.Module] = ()
) -> None:
    for fn in (programs.model, programs.guide, *modules):
        if isinstance(fn, torch.nn.Module):
            fn.to(device)
    for p in programs.param_tensors(names):
        if p.device != device:
            p.data = p.data.to(device)

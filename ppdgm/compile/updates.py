"""Optimizer updates inside a recording: one opaque ``ppdgm::apply_update`` call per phase."""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import torch

# ---------------------------------------------------------------------------------------------- updates
_UPDATES: weakref.WeakValueDictionary[int, PhaseUpdate] = weakref.WeakValueDictionary()


_TOKENS = itertools.count()


class PhaseUpdate:
    """One phase's update, callable from a recording: set the gradients, then the engine's own step."""

    def __init__(self, engine: Any, moving: list[Any], params: list[torch.Tensor]) -> None:
        self.engine, self.moving, self.params = engine, moving, params
        self.token = next(_TOKENS)
        _UPDATES[self.token] = self

    def __call__(self, loss: torch.Tensor, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        for player in self.moving:
            player.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g
        self.engine.apply_gradients(loss, self.moving, self.params)


@torch.library.custom_op("ppdgm::apply_update", mutates_args=("params",))
def _apply_update(token: int, loss: torch.Tensor, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """Step the optimizers of one phase's players with ``grads`` (opaque to tracing: replayed as a call)."""
    apply_update_now(token, loss, params, grads)


def apply_update_now(token: int, loss: torch.Tensor, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    _UPDATES[token](loss, params, grads)


class RecordingUpdates:
    """The engine's ``update`` while tracing: gradients as recorded operations, the step as one opaque call."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.updates: dict[tuple[str, ...], PhaseUpdate] = {}

    def __call__(self, loss: torch.Tensor, moving: list[Any], params: list[torch.Tensor]) -> None:
        names = tuple(player.name for player in moving)
        update = self.updates.get(names)
        if update is None:
            update = self.updates[names] = PhaseUpdate(self.engine, moving, params)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        used = [(p, g) for p, g in zip(params, grads) if g is not None]
        with torch.no_grad():
            torch.ops.ppdgm.apply_update(update.token, loss.detach(), [p for p, _ in used], [g for _, g in used])

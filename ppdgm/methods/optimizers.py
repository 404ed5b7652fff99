"""Players and their torch optimizers (fused kernels where torch has them)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch

from ppdgm.errors import UsageError

OptimizerSpec = str | type[torch.optim.Optimizer] | Callable[[list[torch.Tensor]], torch.optim.Optimizer]


_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


@dataclass
class Player:
    """Parameters that move together, with the optimizer that moves them."""

    name: str
    param_names: tuple[str, ...]
    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer


def make_optimizer(
    params: list[torch.Tensor], optimizer: OptimizerSpec, lr: float, options: Mapping[str, Any] | None = None
) -> torch.optim.Optimizer:
    """Build a torch optimizer from a name (``"adam"``...), an optimizer class or a factory.

    A named optimizer takes torch's fused kernels (one kernel per step for all parameters: Adam, AdamW, SGD) where
    torch has them for the parameters' device and dtype, else its multi-tensor (``foreach``) kernels; options
    ``fused=False`` or ``foreach=...`` choose for themselves (``fused=False`` is the implementation before fused
    became the default). :func:`implementation` says which ran.
    """
    options = dict(options or {})
    if isinstance(optimizer, str):
        try:
            optimizer = _OPTIMIZERS[optimizer.lower()]
        except KeyError:
            raise UsageError(f"unknown optimizer {optimizer!r}; known: {sorted(_OPTIMIZERS)}") from None
        if "fused" not in options and "foreach" not in options and optimizer in _FUSABLE:
            try:
                return cast(Any, optimizer)(params, lr=lr, fused=True, **options)
            except (RuntimeError, ValueError):  # no fused kernel for this device or dtype (or these options)
                pass
        if not options.get("fused"):
            # torch picks the per-tensor Python loop on CPU; the multi-tensor kernels are ~20% faster there
            options.setdefault("foreach", True)
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return cast(Any, optimizer)(params, lr=lr, **options)
    return cast(Callable[[list[torch.Tensor]], torch.optim.Optimizer], optimizer)(params)


#: optimizers with fused kernels in torch (CPU and CUDA)
_FUSABLE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def implementation(optimizer: torch.optim.Optimizer) -> str:
    """``"fused"``, ``"foreach"`` or ``"for-loop"``: which of torch's implementations steps ``optimizer``."""
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    if group.get("fused"):
        return "fused"
    return "foreach" if group.get("foreach") else "for-loop"


def refused_option(optimizer: OptimizerSpec, lr: float, options: Mapping[str, Any]) -> str | None:
    """The first option the optimizer refuses on its own (on a stand-in parameter), to name it."""
    for key, value in options.items():
        try:
            make_optimizer([torch.zeros(1, requires_grad=True)], optimizer, lr, {key: value})
        except (TypeError, ValueError):
            return key
    return None


def host_step_counters(optimizer: torch.optim.Optimizer) -> None:
    """Keep Adam-style ``step`` counters on the CPU, where torch means them to be unless ``capturable``/``fused``.

    torch before 2.13 creates a new counter on the *default* device, which the trainer sets to the GPU
    (``with torch.device(dev)``) so that users' programs allocate there; a counter on the GPU turns each
    step's bias correction into a ``.item()`` — a host synchronisation per step and player.
    """
    for group in optimizer.param_groups:
        if group.get("capturable") or group.get("fused"):
            continue
        for p in group["params"]:
            state = optimizer.state.get(p)
            step = state.get("step") if state else None
            if state is not None and torch.is_tensor(step) and step.device.type != "cpu":
                state["step"] = step.cpu()

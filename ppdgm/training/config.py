"""What a fit is asked to do, checked: the budget, the step arguments, the run record."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ppdgm.data.dataset import Dataset
from ppdgm.data.streams import Source
from ppdgm.errors import UsageError, positive_int
from ppdgm.methods.base import Method
from ppdgm.runtime import distributed


def function_name(fn: Callable) -> str:
    """A function's name for run records."""
    return getattr(fn, "__qualname__", None) or repr(fn)


def check_step_kwargs(step_kwargs: Any) -> dict[str, Any]:
    if step_kwargs is None:
        return {}
    if not isinstance(step_kwargs, Mapping):
        raise UsageError(
            f"step_kwargs must be a mapping from argument names to values, got {type(step_kwargs).__name__}"
        )
    bad = [k for k in step_kwargs if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise UsageError(f"step_kwargs keys name the programs' keyword arguments; {bad} are not valid names")
    return dict(step_kwargs)


def check_fit_arguments(
    seed: Any,
    log_every: Any,
    validate_every: Any,
    callbacks: Any,
    checkpoint_dir: Any,
    progress: Any,
    validate: Any,
    skip_nonfinite: Any,
) -> None:
    """The checks of ``fit``'s plain arguments, before any work."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    positive_int("log_every", log_every)
    if isinstance(validate_every, bool) or not isinstance(validate_every, int) or validate_every < 0:
        raise UsageError(f"validate_every must be a non-negative integer (0: never), got {validate_every!r}")
    if not all(callable(cb) for cb in callbacks):
        raise UsageError("callbacks must be callables callback(run, record)")
    for label, flag in (("progress", progress), ("validate", validate), ("skip_nonfinite", skip_nonfinite)):
        if not isinstance(flag, bool):
            raise UsageError(f"{label} must be True or False, got {flag!r}")
    if checkpoint_dir is not None and Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
        raise UsageError(f"checkpoint_dir {str(checkpoint_dir)!r} is a file, not a folder")


@dataclass(frozen=True)
class Budget:
    """How long a fit trains: minibatch size, batches per epoch (``None``: a stream of unknown length), total steps."""

    batch_size: int
    batches_per_epoch: int | None
    total_steps: int

    @classmethod
    def of(cls, source: Source, epochs: int | None, steps: int | None, batch_size: int) -> Budget:
        """From ``epochs`` or ``steps`` (default 10 epochs), each checked."""
        if epochs is not None and steps is not None:
            raise UsageError("give epochs or steps, not both")
        batch_size = positive_int("batch_size", batch_size)
        per_epoch = source.batches_per_epoch(batch_size)
        if per_epoch is None:
            if steps is None:
                raise UsageError("an IterableDataset without __len__ has no epoch length: give steps=N")
            return cls(batch_size, None, positive_int("steps", steps))
        if steps is not None:
            return cls(batch_size, per_epoch, positive_int("steps", steps))
        return cls(batch_size, per_epoch, positive_int("epochs", 10 if epochs is None else epochs) * per_epoch)

    @property
    def num_epochs(self) -> int | None:
        """Epochs the budget spans (``None`` for a stream of unknown length: passes until the steps are done)."""
        if self.batches_per_epoch is None:
            return None
        return math.ceil(self.total_steps / self.batches_per_epoch)


def run_record(
    method: Method,
    dataset: Dataset,
    budget: Budget,
    lr: Any,
    optimizer: Any,
    seed: int,
    dev: torch.device,
    obs_site: str | None,
    lr_schedule: Any,
    ctx: distributed.Context | None,
    precision: str,
) -> dict:
    """The fit's record of what it runs (``Run.config``, checkpoints, ``config.json``)."""
    return {
        "method": method.name,
        "method_options": method.options(),
        "data": dataset.name,
        "batch_size": budget.batch_size,
        "epochs": budget.num_epochs,
        "steps": budget.total_steps,
        "lr": dict(lr) if isinstance(lr, Mapping) else lr,
        "optimizer": optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", repr(optimizer)),
        "seed": seed,
        "device": str(dev),
        "obs_site": obs_site,
        "lr_schedule": lr_schedule if isinstance(lr_schedule, str) or lr_schedule is None else repr(lr_schedule),
        "world_size": 1 if ctx is None else ctx.world_size,
        "precision": precision,
    }


def plain_options(options: Mapping[str, Any] | None) -> dict:
    """Optimizer options as plain data (nested mappings to dicts, tuples to lists) for records and comparisons."""

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return list(value) if isinstance(value, tuple) else value

    return plain(dict(options or {}))

"""Learning-rate schedules: a factor on the learning rates per epoch."""

from __future__ import annotations

from collections.abc import Callable

from ppdgm.errors import UsageError


def burda2016_schedule(epoch: int) -> float:
    """Burda et al. (2016): 3^i epochs at learning rate lr * 10^(-i/7), i = 0..7 (3,280 epochs in all)."""
    stage, end = 0, 1
    while epoch >= end and stage < 7:
        stage += 1
        end += 3**stage
    return 10 ** (-stage / 7)


def linear_decay_schedule(num_epochs: int) -> Callable[[int], float]:
    """lr * (1 - epoch / num_epochs): a straight line from the full rate to zero over the run."""

    def schedule(epoch: int) -> float:
        return max(0.0, 1.0 - epoch / num_epochs)

    return schedule


LR_SCHEDULES: dict[str, Callable[[int], float]] = {"burda2016": burda2016_schedule}


LENGTH_SCHEDULES: dict[str, Callable[[int], Callable[[int], float]]] = {"linear": linear_decay_schedule}


def schedule_names() -> list[str]:
    """The names ``lr_schedule`` accepts."""
    return sorted([*LR_SCHEDULES, *LENGTH_SCHEDULES])


def resolve_schedule(
    schedule: str | Callable[[int], float] | None, num_epochs: int | None = None
) -> Callable[[int], float] | None:
    """A schedule function from a callable or a name (``"burda2016"``; ``"linear"``, which needs ``num_epochs``)."""
    if schedule is None or callable(schedule):
        return schedule
    if schedule in LENGTH_SCHEDULES and num_epochs is not None:
        return LENGTH_SCHEDULES[schedule](num_epochs)
    try:
        return LR_SCHEDULES[schedule]
    except KeyError:
        raise UsageError(f"unknown lr_schedule {schedule!r}; known: {schedule_names()}") from None

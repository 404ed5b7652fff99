"""ppdgm's error types: one base for every user mistake ppdgm can name.

:class:`PpdgmError` is the base of every error that says what the user should change — a bad argument
(:class:`UsageError`), a program that does not fit (``ConventionError``, ``ProgramError``), a damaged or
foreign file (``CheckpointError``), a bad comparison spec (``SpecError``), missing data
(``DataUnavailableError``), a diverged run (``TrainingDiverged``). The command line prints these in one
line and exits with status 2; any other exception is a bug and keeps its traceback. :func:`positive_int` is the
one check of counts.
"""

from __future__ import annotations

from typing import Any


class PpdgmError(Exception):
    """A user mistake (or a run's outcome) that ppdgm names; the message says what to change."""


class MissingResourceError(PpdgmError, RuntimeError):
    """Something the run needs is not on this machine: a GPU, a data set's files."""


class UsageError(PpdgmError, ValueError, TypeError):
    """A bad argument, option or value, named in the message.

    It is a ``ValueError`` and a ``TypeError`` too, so code that caught those before keeps working.
    """


def positive_int(label: str, value: Any) -> int:
    """``value`` as an int, refusing anything but a positive whole number (``True`` and strings included), naming
    ``label``: the one check of counts (particles, epochs, steps, batch sizes...)."""
    try:
        whole = int(value)
    except (TypeError, ValueError, OverflowError):
        whole = None
    if isinstance(value, bool | str) or whole is None or whole != value or whole < 1:
        raise UsageError(f"{label} must be a positive integer, got {value!r}")
    return whole

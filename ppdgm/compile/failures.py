"""Why a step runs eagerly: the warning when it falls back, the error when it may not, and the cause."""

from __future__ import annotations

from ppdgm.errors import UsageError


class CompileWarning(UserWarning):
    """A step could not be compiled (or its recording disagreed with the eager step): it runs eagerly."""


class CompileError(UsageError):
    """``compile=True`` and a step could not be compiled."""


class Uncompilable(Exception):
    """Why a step cannot be recorded, with the program line responsible where known."""

"""Minibatches of several data columns, passed to Pyro programs the way ``SVI.step`` passes its arguments.

A single tensor of rows is the common case and flows through ppdgm as a plain tensor: the programs
receive it as their first positional argument, ``model(x)``. Data with several columns — images with
labels, a mask beside partially observed labels — is a :class:`Batch`:

* ``Batch((images, labels))`` (or the tuple ``(images, labels)`` given as data) calls
  ``model(images, labels)``, as ``svi.step(images, labels)`` would;
* ``Batch(kwargs={"x": images, "y": labels})`` (or a dict given as data) calls ``model(x=images, y=labels)``.

Every column holds one row per datapoint; rows are selected, moved and split together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ppdgm.errors import UsageError

Key = int | str
Rows = torch.Tensor  # one column: first dimension over datapoints


class Batch:
    """Rows of one or more data columns: ``args`` passed positionally, ``kwargs`` by keyword.

    A column may be ``None`` (an absent input, e.g. an observed column on the model side of a
    program that generates when given ``None``).
    """

    __slots__ = ("args", "kwargs")

    def __init__(self, args: Sequence[Rows | None] = (), kwargs: Mapping[str, Rows | None] | None = None) -> None:
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})

    # ------------------------------------------------------------------ columns
    def items(self) -> list[tuple[Key, Rows | None]]:
        """``(key, column)`` pairs: positions for ``args``, names for ``kwargs``."""
        return [*enumerate(self.args), *self.kwargs.items()]

    def get(self, key: Key) -> Rows | None:
        return self.args[key] if isinstance(key, int) else self.kwargs[key]

    def replace(self, values: Mapping[Key, Rows | None]) -> Batch:
        """A batch with the columns of ``values`` replaced (the others kept)."""
        args = [values.get(i, a) for i, a in enumerate(self.args)]
        kwargs = {k: values.get(k, v) for k, v in self.kwargs.items()}
        return Batch(args, kwargs)

    def map(self, fn: Callable[[Rows], Rows]) -> Batch:
        """``fn`` applied to every column that is present."""
        return Batch(
            [None if a is None else fn(a) for a in self.args],
            {k: None if v is None else fn(v) for k, v in self.kwargs.items()},
        )

    # ------------------------------------------------------------------ rows
    def __len__(self) -> int:
        for _, column in self.items():
            if column is not None:
                return int(column.shape[0])
        return 0

    def __getitem__(self, index: Any) -> Batch:
        return self.map(lambda column: column[index])

    def split(self, size: int) -> list[Batch]:
        return [self[start : start + size] for start in range(0, len(self), size)]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self.map(lambda column: column.to(device, non_blocking=non_blocking))

    def __iter__(self) -> Iterator:
        raise TypeError("a Batch is not iterable; use .items() for its columns or .split() for its rows")

    def describe(self) -> str:
        """``"(arg 0: (100, 64) float32, arg 1: (100,) int64)"``: what the programs receive."""

        def one(key: Key, column: Rows | None) -> str:
            label = f"arg {key}" if isinstance(key, int) else key
            if column is None:
                return f"{label}: None"
            return f"{label}: {tuple(column.shape)} {str(column.dtype).removeprefix('torch.')}"

        return "(" + ", ".join(one(k, v) for k, v in self.items()) + ")"

    def __repr__(self) -> str:
        return f"Batch{self.describe()}"


Data = torch.Tensor | Batch


def first_column(data: Data) -> tuple[Key, Rows]:
    """The key and rows of the first column that is present (``(0, data)`` for a tensor): the data's device
    and, for images with labels, the images."""
    if torch.is_tensor(data):
        return 0, data
    for key, column in data.items():
        if column is not None:
            return key, column
    raise UsageError(f"the batch {data.describe()} has no column present")


def describe_columns(data: Data) -> str | None:
    """The columns' shapes per row, ``"0: (64,) float32, 1: (10,) float32"``, for run records (``None`` for a
    single tensor)."""
    if torch.is_tensor(data):
        return None
    return ", ".join(
        f"{k}: {tuple(c.shape[1:])} {str(c.dtype).removeprefix('torch.')}" for k, c in data.items() if c is not None
    )


def batch_size(data: Data) -> int:
    """Rows of a tensor or a batch."""
    return int(data.shape[0]) if torch.is_tensor(data) else len(data)


def as_column(value: Any, name: str) -> torch.Tensor:
    """A tensor column from a tensor or array: floating arrays become float32, integer arrays int64."""
    if torch.is_tensor(value):
        column = value
    elif isinstance(value, np.ndarray):
        column = torch.as_tensor(value)
        if column.is_floating_point():
            column = column.float()
    else:
        raise UsageError(
            "data must be a data set name, a ppdgm Dataset, a tensor, or a tuple/dict of tensor columns; "
            f"the column {name} is a {type(value).__name__}"
        )
    if column.dim() == 0 or column.shape[0] == 0:
        raise UsageError(f"data column {name} must have one datapoint per row, got shape {tuple(column.shape)}")
    return column


def as_batch(data: tuple | list | Mapping) -> Batch:
    """A :class:`Batch` from a tuple/list (positional columns) or a dict (keyword columns); rows checked."""
    if isinstance(data, Mapping):
        bad = [k for k in data if not isinstance(k, str) or not k.isidentifier()]
        if bad:
            raise UsageError(f"the keys of dict data name keyword arguments; {bad} are not valid names")
        batch = Batch(kwargs={k: as_column(v, repr(k)) for k, v in data.items()})
    else:
        batch = Batch([as_column(v, f"at position {i}") for i, v in enumerate(data)])
    if not batch.items():
        raise UsageError("data with no columns")
    rows = {key: int(column.shape[0]) for key, column in batch.items() if column is not None}
    if len(set(rows.values())) > 1:
        raise UsageError(f"the data columns have different numbers of rows: {rows}")
    return batch


def as_rows(data: Any) -> Data:
    """A tensor of rows (from a tensor or array) or a :class:`Batch` (from a batch, tuple, list or dict)."""
    if torch.is_tensor(data) or isinstance(data, Batch):
        return data
    if isinstance(data, np.ndarray):
        return torch.as_tensor(data, dtype=torch.float32)
    if isinstance(data, tuple | list | Mapping):
        return as_batch(data)
    raise UsageError(f"data must be a tensor, an array, or a tuple/dict of columns, got {type(data).__name__}")

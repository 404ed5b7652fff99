"""The :class:`Dataset` every named data set is: train/valid/test splits with what plotting and metrics need."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ppdgm.data.streams import as_source, materialize
from ppdgm.data.transforms import RowTransform
from ppdgm.errors import UsageError
from ppdgm.programs.batch import Batch, describe_columns, first_column

SPLITS = ("train", "valid", "test")


@dataclass
class Dataset:
    """Train/valid/test rows of one data set.

    Each split is rows in memory (a tensor, or a :class:`~ppdgm.programs.batch.Batch` of several columns), a torch
    ``Dataset``/``IterableDataset``/``DataLoader`` read in minibatches (:mod:`ppdgm.data.streams`), or ``None``
    when the data set has no such split. ``transform`` (e.g. :class:`~ppdgm.data.transforms.DynamicBinarization`)
    is applied to every batch as it is read.
    """

    name: str
    train: Any
    valid: Any = None
    test: Any = None
    image_shape: tuple[int, ...] | None = None
    binary: bool = False
    log_density: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    labels: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    transform: RowTransform | None = None
    classes: int | None = None

    @property
    def dim(self) -> int:
        """Numbers per row of the (first) data column."""
        head = as_source(self.train).head(1)
        return int(first_column(head)[1][0].numel())

    def describe_columns(self) -> str | None:
        """The columns' shapes per row, for run records (``None`` for a single tensor)."""
        return describe_columns(as_source(self.train).head(1))

    def tensor(self, name: str) -> torch.Tensor:
        """A split of a single-tensor data set in memory (a clear error for data of several columns)."""
        rows = self.rows(name)
        if not torch.is_tensor(rows):
            raise UsageError(f"data set {self.name!r} has several columns; this needs a single tensor of rows")
        return rows

    def split(self, name: str) -> Any:
        """A split as given: rows in memory, a torch data set, or ``None``."""
        if name not in SPLITS:
            raise UsageError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def rows(self, name: str, limit: int | None = None, seed: int = 0) -> torch.Tensor | Batch:
        """A split's rows in memory, in order (at most ``limit``), with the data set's transform drawn once per
        ``seed``: what evaluation reads."""
        split = self.split(name)
        if split is None:
            raise UsageError(f"data set {self.name!r} has no {name} split")
        return materialize(split, limit, transform=self.transform, seed=seed)


def default_data_dir() -> Path:
    return Path(os.environ.get("PPDGM_DATA", Path.home() / ".cache" / "ppdgm"))


def labelled_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """A boolean mask keeping ``per_class`` rows of each class (drawn with ``seed``): the labelled rows of a
    semi-supervised experiment."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique().tolist():
        rows = torch.nonzero(labels == c).flatten()
        mask[rows[torch.randperm(len(rows), generator=gen)[:per_class]]] = True
    return mask

"""Reading a torch data set's batches: collated items, and bad items named."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import (
    DataLoader,
    default_collate,
)

from ppdgm.errors import UsageError
from ppdgm.programs.batch import Batch, Data, as_rows


def read_batches(loader: DataLoader) -> Iterator[Data]:
    """A loader's batches as ppdgm rows, with a hint when its items do not collate into tensors."""
    iterator = iter(loader)
    try:
        while True:
            try:
                raw = next(iterator)
            except StopIteration:
                return
            except TypeError as err:
                if "collate" not in str(err):
                    raise
                raise UsageError(
                    f"the data set's items do not collate into tensors ({err}); add a transform that turns them into "
                    "tensors (e.g. torchvision's ToTensor)"
                ) from err
            yield collated(raw)
    finally:  # workers stop now, not when the iterator is collected (maybe in a later loader's forked worker)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _structure(item: Any) -> Any:
    """What must agree between items to batch them: tensors' shapes and dtypes, tuples' lengths, dicts' keys."""
    if torch.is_tensor(item):
        return ("tensor", tuple(item.shape), str(item.dtype))
    if isinstance(item, tuple | list):
        return ("tuple", len(item), tuple(_structure(v) for v in item))
    if isinstance(item, Mapping):
        return ("dict", tuple(sorted(map(str, item))), tuple(_structure(item[k]) for k in sorted(item, key=str)))
    if isinstance(item, int | float | bool):
        return ("number",)
    return (type(item).__name__,)


def _described(structure: Any) -> str:
    kind = structure[0]
    if kind == "tensor":
        return f"a tensor of shape {list(structure[1])} ({structure[2]})"
    if kind == "tuple":
        return f"a {structure[1]}-tuple of ({', '.join(_described(s) for s in structure[2])})"
    if kind == "dict":
        return f"a dict with keys {list(structure[1])}"
    return f"a {kind}"


def checked_collate(batch: Sequence[Any]) -> Any:
    """torch's ``default_collate``, after checking that every item has the first one's structure (torch's uses the
    first item's dict keys and would drop another item's extra keys without a word)."""
    first = _structure(batch[0]) if len(batch) else None
    if any(_structure(item) != first for item in batch[1:]):
        raise ValueError("the batch's items differ in structure")  # the reader names the item (diagnose_items)
    return default_collate(list(batch))


def diagnose_items(dataset: Any, indices: Sequence[int]) -> UsageError | None:
    """The first item of a batch that cannot be read, or that differs in structure from the batch's first item."""
    first: tuple[int, Any] | None = None
    for i in indices:
        try:
            item = dataset[i]
        except Exception as err:
            return UsageError(f"reading item {i} of the data set raised {type(err).__name__}: {err}")
        structure = _structure(item)
        if first is None:
            first = (i, structure)
        elif structure != first[1]:
            return UsageError(
                f"item {i} of the data set is {_described(structure)}, but item {first[0]} of the same batch is "
                f"{_described(first[1])}: items must have one structure to be batched"
            )
    return None


def collated(raw: Any) -> Data:
    """A collated DataLoader batch as ppdgm rows: a tensor, or a :class:`Batch` for tuples, lists and dicts."""
    if isinstance(raw, Batch) or torch.is_tensor(raw):
        return raw
    if isinstance(raw, tuple | list) and len(raw) == 1 and torch.is_tensor(raw[0]):
        return raw[0]  # a TensorDataset of one tensor: plain rows, as a tensor given directly
    if isinstance(raw, tuple | list | Mapping):
        return as_rows(tuple(raw) if isinstance(raw, list) else raw)
    raise UsageError(
        f"a data set's batches must collate to a tensor, a tuple/list or a dict of tensors, got {type(raw).__name__}; "
        "add a transform that turns its items into tensors (e.g. torchvision's ToTensor)"
    )

"""Checkpoint and parameter files: plain data only, written atomically, checksummed, verified on load.

A file holds a dict of tensors, numbers, strings, lists, tuples and dicts — nothing that runs code when
read: :func:`load` reads it with ``torch.load(weights_only=True)``, so a crafted pickle is refused, not
executed. :func:`save` adds a ``checksum`` entry, a SHA-256 over every value (each tensor's dtype, shape
and bytes), and :func:`load` recomputes it: a flipped byte in a tensor is an error naming the file, not
a silently different parameter. Files are written to a temporary name beside the target and renamed,
so a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import random
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppdgm.errors import PpdgmError

CHECKSUM = "checksum"


class CheckpointError(PpdgmError, ValueError):
    """A checkpoint or parameter file is damaged, foreign, or does not fit the fit that reads it."""


def _digest(value: Any, h: Any) -> None:
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"tensor {data.dtype} {tuple(value.shape)};".encode())
        h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    elif isinstance(value, Mapping):
        h.update(f"dict {len(value)};".encode())
        for key in sorted(value, key=repr):
            h.update(f"{key!r}:".encode())
            _digest(value[key], h)
    elif isinstance(value, list | tuple):
        h.update(f"{type(value).__name__} {len(value)};".encode())
        for item in value:
            _digest(item, h)
    else:
        h.update(f"{type(value).__name__} {value!r};".encode())


def digest(value: Any) -> str:
    """SHA-256 over a value of plain data and tensors (each tensor's dtype, shape and bytes)."""
    h = hashlib.sha256()
    _digest(value, h)
    return h.hexdigest()


def checksum(content: Mapping[str, Any]) -> str:
    """SHA-256 over every entry of ``content`` but the checksum itself."""
    h = hashlib.sha256()
    _digest({k: v for k, v in content.items() if k != CHECKSUM}, h)
    return h.hexdigest()


def save(content: Mapping[str, Any], path: str | Path) -> None:
    """Write ``content`` (plain data and tensors) with its checksum to ``path``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**content, CHECKSUM: checksum(content)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(record, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load(path: str | Path, what: str = "checkpoint", fresh: str = "delete it to start fresh") -> dict[str, Any]:
    """Read a file written by :func:`save`, refusing anything but plain data and verifying the checksum.

    ``what`` and ``fresh`` complete the error messages: what the file is, and how to do without it.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning: the refusal below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            record = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} does not exist") from None
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{what} {path} is damaged or not a ppdgm file, and was not run ({first}); {fresh}"
        ) from None
    if not isinstance(record, dict) or CHECKSUM not in record:
        raise CheckpointError(f"{what} {path} has no checksum: not written by this ppdgm, or damaged; {fresh}")
    if record[CHECKSUM] != checksum(record):
        raise CheckpointError(f"{what} {path} is damaged: its content does not match its checksum; {fresh}")
    return {k: v for k, v in record.items() if k != CHECKSUM}


def rng_state() -> dict[str, Any]:
    """Every random state (Python, NumPy, torch, CUDA) as plain data."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Every random state as it was before the block: work inside it (validation) leaves the stream untouched."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the random states of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

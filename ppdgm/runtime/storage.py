"""Checkpoint and parameter files: plain data only, written atomically, checksummed, verified on load.

A file holds a dict of tensors, numbers, strings, lists, tuples and dicts — nothing that runs code when
read: :func:`load` reads it with ``torch.load(weights_only=True)``, so a crafted pickle is refused, not
executed. :func:`save` adds a ``checksum`` entry, a SHA-256 over every value (each tensor's dtype, shape
and bytes), and :func:`load` recomputes it: a flipped byte in a tensor is an error naming the file, not
a silently different parameter. Files are written to a temporary name beside the target, flushed to disk
and renamed, so a crash never leaves half a file (:func:`save`, :func:`write_text`, :func:`atomic_path`), and
get the mode any file the user creates gets.

A run folder has one writer: :func:`writing` holds an exclusive lock on ``.ppdgm.lock`` in it (``flock``: the
system releases it when the process ends, however it ends, so a dead writer's lock is taken over) and refuses a
second writer naming the first (pid, host, start time); it also removes the temporaries a killed writer left.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import random
import socket
import tempfile
import time
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


class OutputError(PpdgmError, OSError):
    """A run's files cannot be written (a read-only folder, a full disk); the message names the path."""


class FolderBusy(PpdgmError, RuntimeError):
    """Another process is writing the run folder; the message names it."""


#: the lock file of a run folder (:func:`writing`)
LOCK_NAME = ".ppdgm.lock"
#: the mark of ppdgm's temporary files (removed when found in a folder this process holds)
TMP_MARK = ".ppdgm-tmp"
#: folders this process holds, with their lock file's descriptor and how many holds are nested
_held: dict[str, list[int]] = {}


@contextlib.contextmanager
def writing(folder: str | Path, what: str = "run folder") -> Iterator[Path]:
    """Hold ``folder`` as its one writer while the block runs (created if needed; nested holds are fine).

    Raises :class:`FolderBusy` naming the process that holds it, and :class:`OutputError` when the folder cannot be
    created or written, before any work is done in it.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the {what} {folder}: {err.strerror or err}") from None
    key = str(folder.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield folder
        finally:
            _held[key][1] -= 1
        return
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise OutputError(
            f"cannot write in the {what} {folder} ({err.strerror or err}); choose a folder this user can write to"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise FolderBusy(
            f"the {what} {folder} is being written by another process ({holder}); wait for it to end, or choose "
            "another folder"
        ) from None
    _held[key] = [fd, 0]
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        for stale in folder.glob(f"*{TMP_MARK}*"):  # left by a writer killed mid-write: nobody else writes here
            with contextlib.suppress(OSError):
                stale.unlink()
        yield folder
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _holder(fd: int, attempts: int = 40) -> str:
    """Who holds the lock, from its record (the holder writes it just after locking: read again for a moment)."""
    for _ in range(attempts):
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {holder['pid']} on {holder['host']}, since {holder['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "a process that has not said which"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "file") -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) to write to; on success it is flushed to disk, given the user's
    file mode and renamed to ``path``. A failure to write removes it and raises :class:`OutputError` naming the path
    (the previous ``path``, if any, stays intact)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f"{TMP_MARK}{path.suffix}")
        os.close(fd)
    except OSError as err:
        raise OutputError(f"cannot write the {what} {path}: {err.strerror or err}") from None
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        first = (getattr(err, "strerror", None) or str(err).strip().splitlines()[0]) if str(err).strip() else ""
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        raise OutputError(f"cannot write the {what} {path} ({first or type(err).__name__}){kept}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(path: str | Path, text: str, what: str = "file") -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path, what) as tmp:
        tmp.write_text(text)


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


def save(content: Mapping[str, Any], path: str | Path, what: str = "checkpoint") -> None:
    """Write ``content`` (plain data and tensors) with its checksum to ``path``, atomically (:func:`atomic_path`)."""
    record = {**content, CHECKSUM: checksum(content)}
    with atomic_path(path, what) as tmp:
        torch.save(record, tmp)


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

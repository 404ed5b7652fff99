"""Host reads a recording refuses, and naming the program line that made one."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pyro
import torch

# ---------------------------------------------------------------------------------------------- host reads
_HOST_READS = {
    torch.ops.aten._local_scalar_dense.default: "reads a tensor on the host (.item(), float(), bool() or an `if`)",
    torch.ops.aten.is_nonzero.default: "branches on a tensor's value (`if tensor:`)",
    torch.ops.aten.equal.default: "compares tensors on the host (torch.equal)",
    torch.ops.aten.nonzero.default: "makes a shape from values (nonzero)",
    torch.ops.aten.masked_select.default: "makes a shape from values (masked_select)",
}


def host_read(func: Any, args: tuple) -> str | None:
    """Why a recording cannot hold this operation (its result would be baked in), naming the program line; else None."""
    cause = _HOST_READS.get(func)
    if cause is None and func is torch.ops.aten.index.Tensor:
        if any(i is not None and i.dtype == torch.bool for i in args[1]):
            cause = "indexes with a boolean mask (its shape depends on values)"
    return None if cause is None else f"the step {cause}{program_line()}"


_LIBRARY_DIRS = tuple(str(Path(str(m.__file__)).parent) for m in (torch, pyro))


_RECORDING_DIR = str(Path(__file__).parent)


def program_line(frames: list[traceback.FrameSummary] | None = None) -> str:
    """``at FILE:LINE (code)`` of the innermost frame outside torch, Pyro and the recording's own code."""
    for frame in reversed(frames if frames is not None else traceback.extract_stack()):
        if frame.filename.startswith(_LIBRARY_DIRS) or str(Path(frame.filename).parent) == _RECORDING_DIR:
            continue
        return f" at {frame.filename}:{frame.lineno} ({(frame.line or '').strip()})"
    return ""

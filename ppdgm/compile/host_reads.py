"""Refusing host reads while recording, and naming the program line that made one."""

from __future__ import annotations

import traceback
from pathlib import Path

import pyro
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ppdgm.compile.failures import Uncompilable

# ---------------------------------------------------------------------------------------------- host reads
_HOST_READS = {
    torch.ops.aten._local_scalar_dense.default: "reads a tensor on the host (.item(), float(), bool() or an `if`)",
    torch.ops.aten.is_nonzero.default: "branches on a tensor's value (`if tensor:`)",
    torch.ops.aten.equal.default: "compares tensors on the host (torch.equal)",
    torch.ops.aten.nonzero.default: "makes a shape from values (nonzero)",
    torch.ops.aten.masked_select.default: "makes a shape from values (masked_select)",
}


class RefuseHostReads(TorchDispatchMode):
    """Raise :class:`Uncompilable` on operations whose result a recording would bake in."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        cause = _HOST_READS.get(func)
        if cause is None and func is torch.ops.aten.index.Tensor:
            if any(i is not None and i.dtype == torch.bool for i in args[1]):
                cause = "indexes with a boolean mask (its shape depends on values)"
        if cause is not None:
            raise Uncompilable(f"the step {cause}{program_line()}")
        return func(*args, **kwargs)


_LIBRARY_DIRS = tuple(str(Path(str(m.__file__)).parent) for m in (torch, pyro))


_THIS_FILE = str(Path(__file__))


def program_line(frames: list[traceback.FrameSummary] | None = None) -> str:
    """``at FILE:LINE (code)`` of the innermost frame outside torch, Pyro and this module."""
    for frame in reversed(frames if frames is not None else traceback.extract_stack()):
        if frame.filename.startswith(_LIBRARY_DIRS) or frame.filename == _THIS_FILE:
            continue
        return f" at {frame.filename}:{frame.lineno} ({(frame.line or '').strip()})"
    return ""

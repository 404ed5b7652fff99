"""The device a fit runs on: ``auto``, ``cpu``, ``cuda[:N]``, a rank's own GPU under torchrun."""

from __future__ import annotations

import contextlib

import torch

from ppdgm.errors import MissingResourceError, UsageError
from ppdgm.runtime import distributed


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; a clear error without a GPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MissingResourceError(
            f"device {str(device)!r} was asked for but no CUDA GPU is available; use device='cpu'"
        )
    return dev


def training_device(device: str | torch.device) -> tuple[torch.device, distributed.Context | None]:
    """The device of this process (a rank's own GPU under torchrun) and the distributed context, if any."""
    dev = resolve_device(device)
    ctx = distributed.context(dev)
    if ctx is not None and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", ctx.local_rank)
    if dev.type == "cuda":
        if dev.index is None:  # set_device refuses a bare "cuda" on recent torch; tensors report an index anyway
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev, ctx


def device_context(dev: torch.device):
    return torch.device(dev) if dev.type != "cpu" else contextlib.nullcontext()

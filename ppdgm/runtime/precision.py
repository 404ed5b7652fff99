"""Mixed precision: networks in bfloat16, probabilities in float32.

``precision="bf16"`` runs a training step under :func:`torch.autocast` with ``torch.bfloat16``, so
matrix products and convolutions run in bfloat16 (with float32 accumulation). Distributions are
another matter: a Gaussian's ``log_prob`` or a reparameterised draw computed from bfloat16
parameters keeps only about three significant digits, and log-weights of IWAE or RWS are
differences of such numbers. :class:`Float32Sites` therefore hands every sample site float32
parameters (a cast of the network outputs), so sampling, scoring and the weight arithmetic stay in
float32 and only the networks change precision. No loss scaling is needed: bfloat16 has float32's
exponent range.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ppdgm.errors import UsageError
from ppdgm.programs.handlers import Float32Sites

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse an unknown precision, or bf16 on a device whose autocast lacks it."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise UsageError(f"precision='bf16' needs a GPU with bfloat16 support; {name} has none")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """The precision context of one training step (nothing for ``"fp32"``)."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=torch.bfloat16), Float32Sites():
        yield

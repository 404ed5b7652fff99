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
import copy
from collections.abc import Iterator

import torch
from pyro.poutine.messenger import Messenger

from ppdgm.distributed import with_params

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse an unknown precision, or bf16 on a device whose autocast lacks it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"precision='bf16' needs a GPU with bfloat16 support; {name} has none")


_LOW = (torch.bfloat16, torch.float16)


def _to_float32(fn: torch.distributions.Distribution) -> torch.distributions.Distribution:
    base = getattr(fn, "base_dist", None)
    if base is not None:
        new_base = _to_float32(base)
        if new_base is base:
            return fn
        new = copy.copy(fn)
        new.base_dist = new_base
        return new
    if not any(isinstance(v, torch.Tensor) and v.dtype in _LOW for v in vars(fn).values()):
        return fn
    return with_params(fn, lambda v: v.float() if v.dtype in _LOW else v)


class Float32Sites(Messenger):
    """Give every sample site's distribution float32 parameters (autocast leaves network outputs in bfloat16)."""

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample":
            msg["fn"] = _to_float32(msg["fn"])


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """The precision context of one training step (nothing for ``"fp32"``)."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=torch.bfloat16), Float32Sites():
        yield

"""Random transforms of each batch's first column, keyed by (seed, epoch, batch)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ppdgm.errors import UsageError
from ppdgm.programs.batch import Data, first_column


class RowTransform:
    """A random transform of the first data column, applied to each batch as it is read.

    Subclasses implement :meth:`apply` on rows and uniform noise of the same shape; the noise of a batch
    is drawn for the whole global batch from ``noise_key(seed, epoch, batch)`` and sliced to this rank's rows.
    """

    name = "transform"

    def apply(self, rows: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data: Data, key: int, rows: slice, n: int) -> Data:
        first_key, first = first_column(data)
        gen = torch.Generator(device="cpu").manual_seed(key)
        if not first.is_floating_point():
            raise UsageError(f"{self.name} needs floating-point pixel values in [0, 1], got {first.dtype}")
        uniform = torch.rand((n, *first.shape[1:]), generator=gen, dtype=torch.float32)[rows]
        out = self.apply(first, uniform.to(first.device, first.dtype))
        return out if torch.is_tensor(data) else data.replace({first_key: out})

    def __repr__(self) -> str:
        return self.name


class DynamicBinarization(RowTransform):
    """x ~ Bernoulli(pixel intensity), drawn afresh every epoch: the dynamic binarization of Burda et al. (2016).

    Evaluation splits get one fixed draw per seed.
    """

    name = "binarize"

    def apply(self, rows: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        return (uniform < rows).to(rows.dtype)


class Dequantization(RowTransform):
    """Uniform dequantization of 8-bit pixels given in [0, 1]: (round(255 x) + u) / 256, u ~ U(0, 1).

    A continuous density on the result relates to the discrete one of the 8-bit values by
    log P(x_8bit) >= E_u log p((x_8bit + u) / 256) - D log 256 (Theis et al., 2016).
    """

    name = "dequantize"

    def apply(self, rows: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        return ((rows * 255).round() + uniform) / 256


TRANSFORMS: dict[str, Callable[[], RowTransform]] = {"binarize": DynamicBinarization, "dequantize": Dequantization}


def get_transform(transform: str | RowTransform | None) -> RowTransform | None:
    """A transform from its name (``"binarize"``, ``"dequantize"``), an instance, or ``None``."""
    if transform is None or isinstance(transform, RowTransform):
        return transform
    try:
        return TRANSFORMS[transform]()
    except (KeyError, TypeError):
        raise UsageError(f"unknown transform {transform!r}; known: {', '.join(TRANSFORMS)} or a RowTransform") from None

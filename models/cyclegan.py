"""Two translators between unpaired domains, for CycleGAN (Zhu, Park, Isola & Efros 2017).

Each translator is a Pyro program ``translator(source)`` whose one site is a deterministic
function of the source row (``Delta``): a conditional generator p(x_target | x_source). The pair is
trained on rows that concatenate one row of domain A and one (unrelated) row of domain B
(:func:`ppdgm.data.unpaired`); as a Pyro model over such rows, :class:`CycleTranslators` observes
the swapped translation of the pair, which lets ``ppdgm.fit`` inspect it like any model.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppdgm.errors import UsageError
from ppdgm.models.gan import output_layer
from ppdgm.models.nets import mlp


class Translator(nn.Module):
    """x_target = output(MLP(x_source)) as a Pyro program with one Delta site named like the translator."""

    def __init__(self, source_dim: int, target_dim: int, hidden: Sequence[int], output: str, name: str) -> None:
        super().__init__()
        self.net = nn.Sequential(mlp([source_dim, *hidden, target_dim], "relu"), output_layer(output))
        self.name = name

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        pyro.module(self.name, self.net)
        with pyro.plate(f"{self.name}_rows", source.shape[0]):
            return pyro.sample(self.name, dist.Delta(self.net(source), event_dim=1))


class ConvTranslator(Translator):
    """A fully convolutional translator of single-channel ``side x side`` images given flat: 3x3 convolutions
    keep translations local (pixels map to nearby pixels), the bias that makes CycleGAN keep content."""

    def __init__(self, side: int, channels: int, layers: int, output: str, name: str) -> None:
        nn.Module.__init__(self)
        blocks: list[nn.Module] = [nn.Unflatten(1, (1, side, side))]
        widths = [1] + [channels] * (layers - 1) + [1]
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            if i < layers - 1:
                blocks.append(nn.ReLU())
        self.net = nn.Sequential(*blocks, nn.Flatten(), output_layer(output))
        self.name = name


class CycleTranslators(nn.Module):
    """G_AB: A -> B and G_BA: B -> A over rows ``[a | b]`` of ``dims = (dim_a, dim_b)`` features.

    Args:
        dims: feature counts of domain A and domain B.
        hidden: hidden sizes of both MLP translators.
        output: output activation of both (``"sigmoid"`` for pixels in [0, 1]).
        image_side: when given (square single-channel images in both domains), fully convolutional
            translators with ``conv_channels`` channels and ``conv_layers`` 3x3 layers instead of MLPs.
    """

    def __init__(
        self,
        dims: tuple[int, int],
        hidden: Sequence[int] = (256, 256),
        output: str = "sigmoid",
        image_side: int | None = None,
        conv_channels: int = 32,
        conv_layers: int = 3,
    ) -> None:
        super().__init__()
        self.dims = tuple(dims)
        if image_side is not None:
            if self.dims != (image_side**2, image_side**2):
                raise UsageError(f"image_side={image_side} needs dims ({image_side**2}, {image_side**2}), got {dims}")
            self.ab = ConvTranslator(image_side, conv_channels, conv_layers, output, "translator_ab")
            self.ba = ConvTranslator(image_side, conv_channels, conv_layers, output, "translator_ba")
        else:
            self.ab = Translator(self.dims[0], self.dims[1], hidden, output, "translator_ab")
            self.ba = Translator(self.dims[1], self.dims[0], hidden, output, "translator_ba")

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., : self.dims[0]], x[..., self.dims[0] :]

    def translate(self, translator: Translator, source: torch.Tensor) -> torch.Tensor:
        """Run one translator program and return its translation (with its graph)."""
        return translator(source)

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        if x is None:
            raise UsageError("CycleTranslators translates given rows; it does not generate from nothing")
        a, b = self.split(x)
        swapped = torch.cat([self.translate(self.ba, b), self.translate(self.ab, a)], -1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("x", dist.Delta(swapped, event_dim=1), obs=x)

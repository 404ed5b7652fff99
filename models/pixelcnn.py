r"""PixelCNN: an autoregressive model of binary images with an exact likelihood.

van den Oord, Kalchbrenner & Kavukcuoglu (2016), "Pixel Recurrent Neural Networks" (§3.5: PixelCNN).
Pixels in raster order, :math:`p(x) = \prod_i p(x_i \mid x_{<i})`, each conditional a Bernoulli whose
logit is computed by masked convolutions: the first layer's mask (type A) hides the centre pixel
and everything after it; later layers' masks (type B) let a position see its own features, which
depend only on earlier pixels. All conditionals come out of one network pass, so the likelihood is
one vectorised Pyro site; sampling is ancestral, one pixel per pass.

The model is a plain Pyro program, ``model(x=None, batch_size=None)``, with no latents: train it
with ``method="mle"``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn
from torch.nn import functional as F

from ppdgm.errors import UsageError


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel sees only pixels before the centre in raster order (and the centre for type B)."""

    def __init__(self, mask_type: str, in_channels: int, out_channels: int, kernel_size: int) -> None:
        if mask_type not in ("A", "B"):
            raise UsageError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        mask = torch.ones_like(self.weight)
        centre = kernel_size // 2
        mask[:, :, centre, centre + (mask_type == "B") :] = 0
        mask[:, :, centre + 1 :, :] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNNNet(nn.Module):
    """Logits of every pixel given the pixels before it: one type-A layer, then residual-free type-B layers."""

    def __init__(self, channels: int = 32, layers: int = 4, kernel_size: int = 5) -> None:
        super().__init__()
        blocks: list[nn.Module] = [MaskedConv2d("A", 1, channels, kernel_size + 2), nn.ReLU()]
        for _ in range(layers - 1):
            blocks += [MaskedConv2d("B", channels, channels, kernel_size), nn.ReLU()]
        blocks.append(MaskedConv2d("B", channels, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class AutoregressiveBernoulli(dist.TorchDistribution):
    """A distribution over flat binary images whose conditionals are given by a masked network.

    ``log_prob(x)`` is one network pass; ``sample()`` fills the image pixel by pixel (ancestral sampling).
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = False

    def __init__(self, net: nn.Module, shape: tuple[int, int], batch_shape: tuple[int, ...] = ()) -> None:
        self.net, self.shape = net, shape
        super().__init__(torch.Size(batch_shape), torch.Size([shape[0] * shape[1]]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return AutoregressiveBernoulli(self.net, self.shape, torch.Size(batch_shape))

    def logits(self, value: torch.Tensor) -> torch.Tensor:
        """The logit of every pixel given the pixels before it, shape of ``value``."""
        flat = value.reshape(-1, 1, *self.shape)
        return self.net(flat).reshape(value.shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = self.logits(value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)

    @torch.no_grad()
    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        param = next(self.net.parameters())
        x = torch.zeros(shape, device=param.device, dtype=param.dtype)
        for i in range(self.event_shape[0]):
            logits = self.logits(x)[..., i]
            x[..., i] = torch.bernoulli(torch.sigmoid(logits))
        return x


class PixelCNN(nn.Module):
    """PixelCNN over ``shape`` binary images given flat, as a Pyro model with one observed site ``x``.

    Args:
        shape: image height and width (the data are rows of ``height * width`` pixels).
        channels, layers, kernel_size: the masked network's width, depth and kernel size.
        name: the name its parameters are registered under with ``pyro.module``.
    """

    def __init__(
        self,
        shape: tuple[int, int] = (28, 28),
        channels: int = 32,
        layers: int = 4,
        kernel_size: int = 5,
        name: str = "pixelcnn",
    ) -> None:
        super().__init__()
        self.shape, self.name = tuple(shape), name
        self.net = PixelCNNNet(channels, layers, kernel_size)

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        pyro.module(self.name, self.net)
        n = x.shape[0] if x is not None else batch_size
        with pyro.plate("data", n):
            return pyro.sample("x", AutoregressiveBernoulli(self.net, self.shape), obs=x)

r"""Convolutional image models: a DCGAN generator/discriminator pair and a convolutional VAE, for ``(C, H, W)``
images given as flat rows (as :mod:`ppdgm.data.images` and the digits give them), each usable as a class-conditional
model.

Every program takes the batch's columns positionally, ``model(x, y=None)``: an unconditional model is
called with the images alone, a conditional one (``classes > 0``) with the one-hot labels beside them, as
``ppdgm.fit(model, guide, (images, labels))`` or a data set loaded with ``columns="x,y"`` calls it. The
labels are an input (no site observes them): a conditional GAN's discriminator sees them beside x, and
``ppdgm.sample(run, n, condition=labels)`` draws images of given classes.

Radford et al. (2016), "Unsupervised Representation Learning with Deep Convolutional GANs": strided
(transposed) convolutions, batch norm in the generator, LeakyReLU(0.2) in the discriminator. Salimans et
al. (2017), "PixelCNN++": the discretized logistic likelihood of 8-bit pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn
from torch.distributions import constraints

from ppdgm.errors import UsageError
from ppdgm.guides.discriminators import Discriminator, dcgan_features
from ppdgm.models.nets import broadcast_cat

LIKELIHOODS = ("bernoulli", "logistic")


def rows_through(net: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``net`` on the last dimension of ``t`` whatever its leading (particle, batch) dimensions: convolutions and
    batch norm take one batch dimension."""
    lead = t.shape[:-1]
    return net(t.reshape(-1, t.shape[-1])).reshape(*lead, -1)


def image_shape_of(x_dim: int) -> tuple[int, int, int]:
    """``(C, H, W)`` of square images with ``x_dim`` numbers: one channel when ``x_dim`` is a square, else three."""
    for channels in (1, 3):
        side = math.isqrt(x_dim // channels)
        if x_dim % channels == 0 and side * side * channels == x_dim:
            return channels, side, side
    raise UsageError(f"{x_dim} numbers a row are not square images of 1 or 3 channels; give image_shape=(C, H, W)")


def _check_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or shape[1] % 4 or shape[2] % 4:
        raise UsageError(f"image_shape must be (C, H, W) with H and W divisible by 4, got {tuple(image_shape)}")
    return shape  # type: ignore[return-value]


class DiscretizedLogistic(TorchDistribution):
    r"""8-bit pixels in [0, 1] (values k/255): the mass of each of the 256 bins under a logistic(loc, scale),
    the edge bins taking the tails (Salimans et al. 2017), one independent pixel per element.

    .. math:: P(k) = \sigma\Big(\frac{k/255 + 1/510 - \mu}{s}\Big) - \sigma\Big(\frac{k/255 - 1/510 - \mu}{s}\Big)
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None) -> None:
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance=None) -> DiscretizedLogistic:
        return DiscretizedLogistic(self.loc.expand(batch_shape), self.scale.expand(batch_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        centred = value - self.loc
        inv_scale = 1.0 / self.scale
        upper = inv_scale * (centred + 1.0 / 510)
        lower = inv_scale * (centred - 1.0 / 510)
        log_cdf_upper = upper - nn.functional.softplus(upper)  # log sigma(upper): the bottom bin
        log_survival_lower = -nn.functional.softplus(lower)  # log (1 - sigma(lower)): the top bin
        mass = torch.sigmoid(upper) - torch.sigmoid(lower)
        middle = torch.where(
            mass > 1e-5,
            torch.log(mass.clamp_min(1e-12)),
            # far in a tail the difference underflows: the density at the bin's centre times its width
            inv_scale * centred - 2 * nn.functional.softplus(inv_scale * centred) + torch.log(inv_scale / 255),
        )
        return torch.where(value < 0.001, log_cdf_upper, torch.where(value > 0.999, log_survival_lower, middle))

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, device=self.loc.device, dtype=self.loc.dtype).clamp(1e-5, 1 - 1e-5)
            x = self.loc.expand(shape) + self.scale.expand(shape) * (torch.log(u) - torch.log1p(-u))
            return (x.clamp(0, 1) * 255).round() / 255

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.clamp(0, 1)


def dcgan_generator_net(in_dim: int, image_shape: Sequence[int], channels: Sequence[int]) -> nn.Sequential:
    """in_dim -> linear -> (c1, H/4, W/4) -> two stride-2 4x4 transposed convolutions with batch norm and ReLU ->
    sigmoid pixels, flat: the DCGAN generator network (H and W divisible by 4)."""
    c, h, w = image_shape
    c1, c2 = channels
    return nn.Sequential(
        nn.Linear(in_dim, c1 * (h // 4) * (w // 4)),
        nn.BatchNorm1d(c1 * (h // 4) * (w // 4)),
        nn.ReLU(),
        nn.Unflatten(1, (c1, h // 4, w // 4)),
        nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1),
        nn.BatchNorm2d(c2),
        nn.ReLU(),
        nn.ConvTranspose2d(c2, c, 4, stride=2, padding=1),
        nn.Sigmoid(),
        nn.Flatten(),
    )


class ConvGenerator(nn.Module):
    """DCGAN generator: z ~ N(0, I) (with the one-hot label beside it when conditional) -> linear ->
    (c1, H/4, W/4) -> two stride-2 4x4 transposed convolutions with batch norm and ReLU -> sigmoid pixels,
    returned flat; x is a Delta site (or Normal with ``noise_scale``).

    Args:
        image_shape: ``(C, H, W)``, H and W divisible by 4.
        z_dim, channels: noise size and the widths of the two feature maps.
        classes: the number of classes of a conditional generator (0: unconditional).
        noise_scale: ``None`` for a Delta x site, else the scale of a Normal one.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        z_dim: int = 64,
        channels: Sequence[int] = (128, 64),
        classes: int = 0,
        noise_scale: float | None = None,
        name: str = "generator",
    ) -> None:
        super().__init__()
        self.image_shape = _check_shape(image_shape)
        self.z_dim, self.classes, self.noise_scale, self.name = z_dim, classes, noise_scale, name
        self.net = dcgan_generator_net(z_dim + classes, self.image_shape, channels)
        self.register_buffer("prior_loc", torch.zeros(z_dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        pyro.module(self.name, self.net)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.prior_loc, 1.0).to_event(1))
            out = rows_through(self.net, z if not self.classes else broadcast_cat(z, _labels(y, self.classes)))
            if self.noise_scale is None:
                fn = dist.Delta(out, event_dim=1)
            else:
                fn = dist.Normal(out, self.noise_scale).to_event(1)
            return pyro.sample("x", fn, obs=x)

    def make_discriminator(self) -> ConvDiscriminator:
        """The matching DCGAN discriminator (seeing the labels beside x when conditional)."""
        return ConvDiscriminator(self.image_shape, extra=self.classes)


def _labels(y: torch.Tensor | None, classes: int) -> torch.Tensor:
    if y is None or y.shape[-1] != classes:
        got = None if y is None else tuple(y.shape)
        raise UsageError(f"this conditional model needs one-hot labels of {classes} classes as its y column, got {got}")
    return y


class ConvDiscriminator(Discriminator):
    """DCGAN discriminator of flat ``(C, H, W)`` images: two stride-2 4x4 convolutions, LeakyReLU(0.2), a linear
    logit. With ``extra`` numbers beside each row (a conditional GAN's one-hot label) it is a *projection*
    discriminator (Miyato & Koyama 2018): logit = w·φ(x) + b + yᵀVφ(x), so the label's term depends on the
    image and the discriminator can tell an image that does not fit its label (a term added to the logit
    independently of x could not).
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (64, 128),
        extra: int = 0,
        name: str = "discriminator",
    ) -> None:
        c, h, w = _check_shape(image_shape)
        self.pixels, self.extra = c * h * w, extra
        features, n_features = dcgan_features((c, h, w), channels)
        super().__init__(_Projection(features, n_features, self.pixels, extra), name=name)


class _Projection(nn.Module):
    def __init__(self, features: nn.Module, n_features: int, pixels: int, extra: int) -> None:
        super().__init__()
        self.features, self.pixels, self.extra = features, pixels, extra
        self.logit = nn.Linear(n_features, 1)
        self.embed = nn.Linear(extra, n_features, bias=False) if extra else None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        flat = inputs.reshape(inputs.shape[0], -1)
        if flat.shape[-1] != self.pixels + self.extra:
            got = flat.shape[-1]
            raise UsageError(f"the discriminator expects {self.pixels} pixels + {self.extra} more, got {got}")
        phi = self.features(flat[:, : self.pixels])
        logit = self.logit(phi)
        if self.embed is not None:
            logit = logit + (self.embed(flat[:, self.pixels :]) * phi).sum(-1, keepdim=True)
        return logit


class _LogScale(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((channels,), -3.0))


class ConvVAE(nn.Module):
    """A convolutional VAE: ``model(x, y=None)`` and ``guide(x, y=None)``.

    p(z) = N(0, I); the decoder maps z (and the one-hot label, when conditional) through a linear layer and
    two stride-2 transposed convolutions to per-pixel parameters of p(x | z): Bernoulli logits for binary
    images, or the loc (and a learned per-channel log scale) of a :class:`DiscretizedLogistic` for 8-bit
    ones; q(z | x) mirrors it with two stride-2 convolutions.

    Args:
        image_shape: ``(C, H, W)``, H and W divisible by 4.
        z_dim, channels: latent size and the two feature maps' widths.
        likelihood: ``"bernoulli"`` or ``"logistic"``.
        classes: number of classes of a conditional model (0: unconditional).
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        z_dim: int = 32,
        channels: Sequence[int] = (32, 64),
        likelihood: str = "bernoulli",
        classes: int = 0,
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise UsageError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.image_shape = _check_shape(image_shape)
        c, h, w = self.image_shape
        c1, c2 = channels
        self.z_dim, self.likelihood, self.classes = z_dim, likelihood, classes
        self.decoder = nn.Sequential(
            nn.Linear(z_dim + classes, c2 * (h // 4) * (w // 4)),
            nn.ReLU(),
            nn.Unflatten(1, (c2, h // 4, w // 4)),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c1, c, 4, stride=2, padding=1),
            nn.Flatten(),
        )
        self.encoder = nn.Sequential(
            nn.Unflatten(1, (c, h, w)),
            nn.Conv2d(c, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.encoder_head = nn.Linear(c2 * (h // 4) * (w // 4) + classes, 2 * z_dim)
        self.pixel_scale = _LogScale(c)
        self.register_buffer("prior_loc", torch.zeros(z_dim))

    def _condition(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return t if not self.classes else broadcast_cat(t, _labels(y, self.classes))

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        pyro.module("conv_decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.prior_loc, 1.0).to_event(1))
            out = rows_through(self.decoder, self._condition(z, y))
            if self.likelihood == "bernoulli":
                fn = dist.Bernoulli(logits=out)
            else:
                pyro.module("conv_pixel_scale", self.pixel_scale)
                c, h, w = self.image_shape
                scale = self.pixel_scale.log_scale.exp().repeat_interleave(h * w)
                fn = DiscretizedLogistic(torch.sigmoid(out), scale)
            return pyro.sample("x", fn.to_event(1), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("conv_encoder", self.encoder)
        pyro.module("conv_encoder_head", self.encoder_head)
        with pyro.plate("data", x.shape[0]):
            loc, raw_scale = self.encoder_head(self._condition(rows_through(self.encoder, x), y)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw_scale) + 1e-3).to_event(1))

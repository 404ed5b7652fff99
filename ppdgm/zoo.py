"""Named model/guide pairs for the CLI and for comparisons: ``build("iwae-1layer", x_dim=784)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ppdgm.errors import UsageError, positive_int
from ppdgm.guides import AffineGaussianGuide, GaussianMLPEncoder, ImplicitMLPEncoder, SBNRecognition
from ppdgm.models import (
    DBN,
    RBM,
    BernoulliMLPModel,
    ConditionalVAE,
    ConvGenerator,
    ConvVAE,
    CycleTranslators,
    DCGANGenerator,
    LinearGaussianModel,
    MLPGenerator,
    PixelCNN,
    SemiSupervisedVAE,
    SigmoidBeliefNet,
)
from ppdgm.models.convolutional import image_shape_of


@dataclass(frozen=True)
class Preset:
    description: str
    factory: Callable[..., tuple[Callable, Callable | None]]
    defaults: dict[str, Any] = field(default_factory=dict)


def _mlp_vae(x_dim: int, z_dim: int, hidden: Sequence[int], activation: str) -> tuple[Callable, Callable]:
    return (
        BernoulliMLPModel(x_dim, z_dim, hidden, activation),
        GaussianMLPEncoder(x_dim, z_dim, tuple(reversed(hidden)), activation),
    )


def _linear_gaussian(x_dim: int, z_dim: int, noise_scale: float) -> tuple[Callable, Callable]:
    return LinearGaussianModel(x_dim, z_dim, noise_scale), AffineGaussianGuide(x_dim, z_dim)


def _sbn(x_dim: int, layers: Sequence[int], hidden: Sequence[int]) -> tuple[Callable, Callable]:
    return SigmoidBeliefNet(x_dim, layers), SBNRecognition(x_dim, layers, hidden)


#: the guides the ``gan-mlp`` and ``gan-image`` presets offer (option ``encoder``, CLI ``--encoder``)
ENCODERS: dict[str, type] = {"gaussian": GaussianMLPEncoder, "implicit": ImplicitMLPEncoder}


def _mlp_gan(
    x_dim: int, z_dim: int, hidden: Sequence[int], output: str, noise_scale: float | None, encoder: str
) -> tuple[Callable, Callable]:
    if encoder not in ENCODERS:
        raise UsageError(f"encoder must be one of {tuple(ENCODERS)}, got {encoder!r}")
    return (
        MLPGenerator(x_dim, z_dim, hidden, "relu", output, noise_scale),
        ENCODERS[encoder](x_dim, z_dim, tuple(reversed(hidden)), activation="relu"),
    )


def _dcgan(x_dim: int, z_dim: int, hidden: Sequence[int]) -> tuple[Callable, Callable]:
    return DCGANGenerator(z_dim, _side(x_dim, "dcgan")), GaussianMLPEncoder(x_dim, z_dim, hidden, "relu")


def _conv_gan(
    x_dim: int, z_dim: int, channels: Sequence[int], classes: int, image_shape: Sequence[int] | None
) -> tuple[Callable, None]:
    shape = tuple(image_shape) if image_shape else image_shape_of(x_dim)
    return ConvGenerator(shape, z_dim, channels, classes), None


def _conv_vae(
    x_dim: int, z_dim: int, channels: Sequence[int], likelihood: str, classes: int, image_shape: Sequence[int] | None
) -> tuple[Callable, Callable]:
    vae = ConvVAE(tuple(image_shape) if image_shape else image_shape_of(x_dim), z_dim, channels, likelihood, classes)
    return vae.model, vae.guide


def _conditional_vae(x_dim: int, classes: int, z_dim: int, hidden: Sequence[int]) -> tuple[Callable, Callable]:
    cvae = ConditionalVAE(x_dim, classes, z_dim, hidden)
    return cvae.model, cvae.guide


def _semi_supervised(
    x_dim: int, classes: int, z_dim: int, hidden: Sequence[int], classification_weight: float
) -> tuple[Callable, Callable]:
    m2 = SemiSupervisedVAE(x_dim, classes, z_dim, hidden, classification_weight)
    return m2.model, m2.guide


def _side(x_dim: int, name: str) -> int:
    side = round(x_dim**0.5)
    if side * side != x_dim:
        raise UsageError(f"{name} needs square single-channel images, got {x_dim} pixels")
    return side


def _pixelcnn(x_dim: int, channels: int, layers: int, kernel_size: int) -> tuple[Callable, None]:
    side = _side(x_dim, "pixelcnn")
    return PixelCNN((side, side), channels, layers, kernel_size), None


def _rbm(x_dim: int, n_hidden: int) -> tuple[Callable, None]:
    return RBM(x_dim, n_hidden), None


def _dbn(x_dim: int, hidden: Sequence[int], pretrain_data: str, pretrain_epochs: int) -> tuple[Callable, Callable]:
    """A DBN pre-trained greedily by CD-1 on ``pretrain_data`` (its train split), returned as (model, guide)."""
    dbn = DBN((x_dim, *hidden))
    dbn.pretrain(pretrain_data, epochs=pretrain_epochs, lr=0.02)
    dbn.normalise_top()
    return dbn.model, dbn.guide


def _cyclegan(x_dim: int, conv_channels: int, conv_layers: int) -> tuple[Callable, None]:
    if x_dim % 2:
        raise UsageError(f"cyclegan needs rows [a | b] of two equal halves, got {x_dim} features")
    side = _side(x_dim // 2, "cyclegan")
    return CycleTranslators(
        (x_dim // 2, x_dim // 2), image_side=side, conv_channels=conv_channels, conv_layers=conv_layers
    ), None


MODELS: dict[str, Preset] = {
    "pixelcnn": Preset(
        "PixelCNN (masked convolutions, Bernoulli pixels) for square binary images; no guide: method mle",
        _pixelcnn,
        {"channels": 32, "layers": 4, "kernel_size": 5},
    ),
    "cyclegan": Preset(
        "two fully convolutional translators between square-image domains, rows [a | b]; no guide: method cyclegan",
        _cyclegan,
        {"conv_channels": 32, "conv_layers": 3},
    ),
    "dbn": Preset(
        "deep belief net pre-trained greedily (CD-1) on pretrain_data, as a Pyro model/guide for wake-sleep "
        "fine-tuning (the top RBM's log Z stored, so its likelihood is exact up to importance sampling)",
        _dbn,
        {"hidden": (32, 12), "pretrain_data": "digits-binary", "pretrain_epochs": 20},
    ),
    "rbm": Preset(
        "binary RBM (energy model, exact log Z up to 20 hidden units, AIS beyond); no guide: methods cd, pcd",
        _rbm,
        {"n_hidden": 16},
    ),
    "gan-mlp": Preset(
        "MLP generator x = G(z) (Delta x site, linear output; 2-D and real data) + MLP encoder for "
        "bigan/aae/infogan (encoder='gaussian', or 'implicit': z = MLP(x, noise), for bigan/aae); "
        "discriminator: the method's default MLP",
        _mlp_gan,
        {"z_dim": 2, "hidden": (256, 256), "output": "identity", "noise_scale": None, "encoder": "gaussian"},
    ),
    "gan-image": Preset(
        "MLP generator with sigmoid pixels (Delta x site) + MLP encoder (gaussian or implicit); for images in [0, 1]",
        _mlp_gan,
        {"z_dim": 64, "hidden": (256, 256), "output": "sigmoid", "noise_scale": None, "encoder": "gaussian"},
    ),
    "dcgan": Preset(
        "DCGAN-style convolutional generator of square images + Gaussian MLP encoder; x-discriminators default "
        "to the matching convolutional discriminator",
        _dcgan,
        {"z_dim": 64, "hidden": (256,)},
    ),
    "conv-gan": Preset(
        "DCGAN generator/discriminator for (C, H, W) images (1 or 3 channels, inferred from the row size, or "
        "image_shape); classes > 0: class-conditional on one-hot labels (data columns x,y); method gan/iwgan",
        _conv_gan,
        {"z_dim": 64, "channels": (128, 64), "classes": 0, "image_shape": None},
    ),
    "conv-vae": Preset(
        "convolutional VAE for (C, H, W) images, Bernoulli (binary) or discretized-logistic (8-bit) pixels; "
        "classes > 0: class-conditional (data columns x,y)",
        _conv_vae,
        {"z_dim": 32, "channels": (32, 64), "likelihood": "bernoulli", "classes": 0, "image_shape": None},
    ),
    "cvae-mlp": Preset(
        "class-conditional VAE (Sohn et al. 2015) for binary images: x | z, y and z | x, y through tanh MLPs, the "
        "one-hot label an input column (data columns x,y); aavae is the adversary-activated CVAE",
        _conditional_vae,
        {"classes": 10, "z_dim": 50, "hidden": (200, 200)},
    ),
    "semi-supervised-vae": Preset(
        "Kingma et al. (2014) M2 for binary images: labels partially observed (data columns x,y,labelled), the "
        "guide's q(y|x) the classifier; vae sums the missing labels out, aavae is the adversary-activated SVAE",
        _semi_supervised,
        {"classes": 10, "z_dim": 16, "hidden": (256,), "classification_weight": 64.0},
    ),
    "sbn": Preset(
        "sigmoid belief net (binary latents, layers from the data up) + MLP Bernoulli recognition per layer",
        _sbn,
        {"layers": (200,), "hidden": (200,)},
    ),
    "helmholtz": Preset(
        "Helmholtz machine: sigmoid belief net + linear-sigmoid recognition per layer (Dayan et al. 1995)",
        _sbn,
        {"layers": (200, 200), "hidden": ()},
    ),
    "vae-mlp": Preset(
        "Bernoulli MLP decoder + Gaussian MLP encoder (binary data)",
        _mlp_vae,
        {"z_dim": 20, "hidden": (200,), "activation": "tanh"},
    ),
    "iwae-1layer": Preset(
        "Burda et al. (2016) one-stochastic-layer architecture: x-200-200-50, tanh (binary data)",
        _mlp_vae,
        {"z_dim": 50, "hidden": (200, 200), "activation": "tanh"},
    ),
    "linear-gaussian": Preset(
        "linear-Gaussian model (exact log p(x)) + affine Gaussian guide (real-valued data)",
        _linear_gaussian,
        {"z_dim": 2, "noise_scale": 0.5},
    ),
}


def build(name: str, x_dim: int, **options: Any) -> tuple[Callable, Callable | None]:
    """A fresh (model, guide) pair of preset ``name`` for data of ``x_dim`` units; options override defaults."""
    try:
        preset = MODELS[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None
    unknown = set(options) - set(preset.defaults)
    if unknown:
        raise UsageError(f"model {name!r} takes no option(s) {sorted(unknown)}; it takes {sorted(preset.defaults)}")
    kwargs = {**preset.defaults, **{k: v for k, v in options.items() if v is not None}}
    for key in SIZES & set(kwargs):
        value = kwargs[key]
        for size in value if isinstance(value, list | tuple) else [value]:
            positive_int(f"model option {key}", size)
    return preset.factory(x_dim, **kwargs)


#: options that are sizes of networks: positive integers (or sequences of them)
SIZES = {"z_dim", "hidden", "layers", "n_hidden", "channels", "kernel_size", "conv_channels", "conv_layers"}

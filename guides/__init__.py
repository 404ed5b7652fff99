"""Recognition networks and discriminators written as plain Pyro guide programs."""

from ppdgm.guides.discriminators import ConvDiscriminator, Discriminator, MLPDiscriminator
from ppdgm.guides.encoders import (
    AffineGaussianGuide,
    ExactLinearGaussianGuide,
    GaussianMLPEncoder,
    ImplicitMLPEncoder,
)
from ppdgm.guides.sbn import SBNRecognition

__all__ = [
    "AffineGaussianGuide",
    "ConvDiscriminator",
    "Discriminator",
    "ExactLinearGaussianGuide",
    "GaussianMLPEncoder",
    "ImplicitMLPEncoder",
    "MLPDiscriminator",
    "SBNRecognition",
]

"""Recognition networks (and, later, discriminators) written as plain Pyro guide programs."""

from ppdgm.guides.encoders import AffineGaussianGuide, ExactLinearGaussianGuide, GaussianMLPEncoder
from ppdgm.guides.sbn import SBNRecognition

__all__ = ["AffineGaussianGuide", "ExactLinearGaussianGuide", "GaussianMLPEncoder", "SBNRecognition"]

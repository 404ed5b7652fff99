"""Recognition networks (and, later, discriminators) written as plain Pyro guide programs."""

from ppdgm.guides.encoders import AffineGaussianGuide, ExactLinearGaussianGuide, GaussianMLPEncoder

__all__ = ["AffineGaussianGuide", "ExactLinearGaussianGuide", "GaussianMLPEncoder"]

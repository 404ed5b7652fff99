"""Generative models written as plain Pyro model functions (``model(x=None, batch_size=None)``)."""

from ppdgm.models.cyclegan import CycleTranslators
from ppdgm.models.dbn import DBN
from ppdgm.models.gan import DCGANGenerator, MLPGenerator
from ppdgm.models.linear_gaussian import LinearGaussianModel
from ppdgm.models.nets import mlp
from ppdgm.models.pixelcnn import PixelCNN
from ppdgm.models.rbm import RBM
from ppdgm.models.sbn import SigmoidBeliefNet
from ppdgm.models.vae import BernoulliMLPModel

__all__ = [
    "CycleTranslators",
    "DBN",
    "BernoulliMLPModel",
    "DCGANGenerator",
    "LinearGaussianModel",
    "MLPGenerator",
    "PixelCNN",
    "RBM",
    "SigmoidBeliefNet",
    "mlp",
]

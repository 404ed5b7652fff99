"""Generative models written as plain Pyro programs (called with a batch as ``SVI.step`` calls them)."""

from ppdgm.models.conditional import ConditionalGenerator, ConditionalVAE
from ppdgm.models.convolutional import ConvDiscriminator, ConvGenerator, ConvVAE, DiscretizedLogistic
from ppdgm.models.cyclegan import CycleTranslators
from ppdgm.models.dbn import DBN
from ppdgm.models.gan import DCGANGenerator, MLPGenerator
from ppdgm.models.linear_gaussian import LinearGaussianModel
from ppdgm.models.nets import mlp
from ppdgm.models.pixelcnn import PixelCNN
from ppdgm.models.rbm import RBM
from ppdgm.models.sbn import SigmoidBeliefNet
from ppdgm.models.semisupervised import SemiSupervisedVAE
from ppdgm.models.vae import BernoulliMLPModel

__all__ = [
    "ConditionalGenerator",
    "ConditionalVAE",
    "ConvDiscriminator",
    "ConvGenerator",
    "ConvVAE",
    "DiscretizedLogistic",
    "SemiSupervisedVAE",
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

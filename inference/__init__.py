"""Training algorithms, one per module, each a short composition of ppdgm's phases.

Every class here is registered by name: ``ppdgm.fit(..., method="iwae", num_particles=50)``
builds the same object as ``ppdgm.inference.IWAE(num_particles=50)``.
"""

from ppdgm.inference.aae import AAE
from ppdgm.inference.aavae import AAVAE
from ppdgm.inference.bigan import BiGAN
from ppdgm.inference.cd import CD, PCD
from ppdgm.inference.cyclegan import CycleGAN
from ppdgm.inference.gan import GAN
from ppdgm.inference.gmmn import GMMN
from ppdgm.inference.infogan import InfoGAN
from ppdgm.inference.iwae import IWAE
from ppdgm.inference.iwgan import IWGAN
from ppdgm.inference.mle import MLE
from ppdgm.inference.rws import RWS
from ppdgm.inference.vae import VAE
from ppdgm.inference.vaegan import VAEGAN
from ppdgm.inference.wake_sleep import WakeSleep
from ppdgm.inference.wgan_gp import WGANGP

__all__ = [
    "AAE",
    "AAVAE",
    "CD",
    "CycleGAN",
    "GAN",
    "GMMN",
    "IWAE",
    "IWGAN",
    "MLE",
    "PCD",
    "RWS",
    "VAE",
    "VAEGAN",
    "BiGAN",
    "InfoGAN",
    "WGANGP",
    "WakeSleep",
]

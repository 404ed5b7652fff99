"""Training algorithms, one per module, each a short composition of ppdgm's phases.

Every class here is registered by name: ``ppdgm.fit(..., method="iwae", num_particles=50)``
builds the same object as ``ppdgm.inference.IWAE(num_particles=50)``.
"""

from ppdgm.inference.iwae import IWAE
from ppdgm.inference.rws import RWS
from ppdgm.inference.vae import VAE
from ppdgm.inference.wake_sleep import WakeSleep

__all__ = ["IWAE", "RWS", "VAE", "WakeSleep"]

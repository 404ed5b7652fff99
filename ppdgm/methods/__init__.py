"""Methods: players and their optimizers, the engine that steps them, the base class and registry of methods.

The algorithms themselves are :mod:`ppdgm.inference`, one module each; :mod:`~ppdgm.methods.adversarial` is
the base they share when a discriminator or a kernel compares data with samples.
"""

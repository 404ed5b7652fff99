"""Training: ``fit``, its configuration, the loop of epochs, checkpoints and resume, schedules, non-finite steps.

:func:`ppdgm.training.fit.fit` is the front; :mod:`~ppdgm.training.config` is the one typed record of what a fit
is asked to do, shared with the command line and comparison specs.
"""

"""Evaluation of trained pairs: likelihood estimates, judges of samples, sampling, fidelity metrics, TensorBoard.

``ppdgm.evaluate.log_likelihood(model, guide, x)`` and its siblings are the front door
(:mod:`ppdgm.evaluate.likelihood`); :mod:`~ppdgm.evaluate.judges` trains the classifiers that judge samples;
:mod:`~ppdgm.evaluate.sampling` draws from a trained model; :mod:`~ppdgm.evaluate.fidelity` holds the inception
score, FID and kernel metrics; :mod:`~ppdgm.evaluate.tensorboard` logs a run's history.
"""

from ppdgm.evaluate.judges import accuracy, classifier_scores, label_accuracy, train_classifier, train_judge
from ppdgm.evaluate.likelihood import (
    Estimate,
    active_units,
    elbo,
    exact_log_likelihood,
    iwae_bound,
    log_likelihood,
    mixture_kl,
    mixture_quality,
)

__all__ = [
    "Estimate", "accuracy", "active_units", "classifier_scores", "elbo", "exact_log_likelihood", "iwae_bound",
    "label_accuracy", "log_likelihood", "mixture_kl", "mixture_quality", "train_classifier", "train_judge",
]  # fmt: skip

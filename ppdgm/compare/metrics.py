"""What a comparison measures: the metric names and the evaluation of one trained run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ppdgm.batch import Data
from ppdgm.errors import UsageError

if TYPE_CHECKING:
    from ppdgm.compare.spec import Spec

METRICS = (
    "log_likelihood",
    "elbo",
    "iwae_bound",
    "exact_log_likelihood",
    "active_units",
    "seconds_per_epoch",
    "mode_coverage",
    "high_quality_fraction",
    "kl_true_model",
    "inception_score",
    "class_coverage",
    "objective",
)
MIXTURE_METRICS = ("mode_coverage", "high_quality_fraction", "kl_true_model")
CLASSIFIER_METRICS = ("inception_score", "class_coverage")
CLASSIFIER_SAMPLES = 2000
MIXTURE_SAMPLES = 2500


def evaluate_run(
    spec: Spec, model: Callable, guide: Callable, test: Data, history: Sequence[dict]
) -> tuple[dict[str, float], dict[str, float]]:
    """The spec's metrics for one trained run on the test split, and the standard errors (over the
    test datapoints) of those that are averages over it."""
    from ppdgm import evaluate
    from ppdgm.data import mixture_centres
    from ppdgm.sampling import generate

    out: dict[str, float] = {}
    stderr: dict[str, float] = {}
    if set(spec.metrics) & set(MIXTURE_METRICS):
        centres, std = mixture_centres(spec.data)
        samples = generate(model, MIXTURE_SAMPLES, mean=False).reshape(MIXTURE_SAMPLES, -1)
        out.update(evaluate.mixture_quality(samples, centres, std))
        if "kl_true_model" in spec.metrics:
            from ppdgm.data import mixture_log_density

            if not isinstance(test, torch.Tensor):
                raise UsageError("kl_true_model needs a single tensor of test rows (a 2-D mixture)")
            out["kl_true_model"] = evaluate.mixture_kl(samples, test, mixture_log_density(spec.data), bandwidth=std)
    if set(spec.metrics) & set(CLASSIFIER_METRICS):
        from ppdgm.data import load

        labelled = load(spec.data, spec.data_dir)
        classifier = evaluate.train_classifier(labelled.tensor("train"), labelled.labels["train"])
        samples = generate(model, CLASSIFIER_SAMPLES).reshape(CLASSIFIER_SAMPLES, -1).cpu()
        out.update(evaluate.classifier_scores(classifier, samples))
    estimators = {
        "log_likelihood": lambda: evaluate.log_likelihood(model, guide, test, num_samples=spec.num_samples),
        "elbo": lambda: evaluate.elbo(model, guide, test),
        "iwae_bound": lambda: evaluate.iwae_bound(model, guide, test, k=spec.iwae_k),
        "exact_log_likelihood": lambda: evaluate.exact_log_likelihood(model, test),
    }
    for metric in spec.metrics:
        if metric in estimators:
            estimate = estimators[metric]()
            out[metric], stderr[metric] = estimate.mean, estimate.stderr
        elif metric == "active_units":
            out[metric] = float(evaluate.active_units(model, guide, test))
        elif metric == "seconds_per_epoch":
            out[metric] = float(np.mean([row["seconds"] for row in history]))
    return {metric: out[metric] for metric in spec.metrics if metric in out}, stderr

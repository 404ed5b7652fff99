"""What a comparison measures: the metric names and the evaluation of one trained run."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ppdgm import evaluate
from ppdgm.data.dataset import default_data_dir
from ppdgm.data.named import load, mixture_centres, mixture_log_density
from ppdgm.errors import UsageError
from ppdgm.evaluate import fidelity
from ppdgm.evaluate.sampling import generate, sample_rows
from ppdgm.programs.batch import Data
from ppdgm.runtime import storage as checkpoints

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
    "fid",
    "conditional_accuracy",
    "semi_supervised_accuracy",
    "objective",
)
MIXTURE_METRICS = ("mode_coverage", "high_quality_fraction", "kl_true_model")
#: metrics judged by a classifier of the data set (or, given ``inception_weights``, by Inception-v3)
CLASSIFIER_METRICS = ("inception_score", "class_coverage", "fid", "conditional_accuracy")
#: data sets with labels, which the classifier metrics and label columns need
LABELLED_DATA = ("digits", "digits-binary", "mnist", "fashion-mnist", "svhn", "cifar10")
CLASSIFIER_SAMPLES = 2000
MIXTURE_SAMPLES = 2500


def evaluate_run(
    spec: Spec, model: Callable, guide: Callable | None, test: Data, history: Sequence[dict]
) -> tuple[dict[str, float], dict[str, float]]:
    """The spec's metrics for one trained run on the test split, and the standard errors (over the
    test datapoints) of those that are averages over it."""

    out: dict[str, float] = {}
    stderr: dict[str, float] = {}

    def guided(metric: str) -> Callable:
        if guide is None:
            raise UsageError(f"metric {metric!r} needs a guide, and the model {spec.model!r} has none")
        return guide

    if set(spec.metrics) & set(MIXTURE_METRICS):
        centres, std = mixture_centres(spec.data)
        samples = generate(model, MIXTURE_SAMPLES, mean=False).reshape(MIXTURE_SAMPLES, -1)
        out.update(evaluate.mixture_quality(samples, centres, std))
        if "kl_true_model" in spec.metrics:
            if not isinstance(test, torch.Tensor):
                raise UsageError("kl_true_model needs a single tensor of test rows (a 2-D mixture)")
            out["kl_true_model"] = evaluate.mixture_kl(samples, test, mixture_log_density(spec.data), bandwidth=std)
    if set(spec.metrics) & set(CLASSIFIER_METRICS):
        out.update(_classifier_metrics(spec, model, test))
        if "inception_score_std" in out:  # the spread over the score's 10 splits, as papers report it
            stderr["inception_score"] = out.pop("inception_score_std")
    if "semi_supervised_accuracy" in spec.metrics:
        out["semi_supervised_accuracy"] = evaluate.label_accuracy(guided("semi_supervised_accuracy"), test)
    estimators = {
        "log_likelihood": lambda: evaluate.log_likelihood(
            model, guided("log_likelihood"), test, num_samples=spec.num_samples
        ),
        "elbo": lambda: evaluate.elbo(model, guided("elbo"), test),
        "iwae_bound": lambda: evaluate.iwae_bound(model, guided("iwae_bound"), test, k=spec.iwae_k),
        "exact_log_likelihood": lambda: evaluate.exact_log_likelihood(model, test),
    }
    for metric in spec.metrics:
        if metric in estimators:
            estimate = estimators[metric]()
            out[metric], stderr[metric] = estimate.mean, estimate.stderr
        elif metric == "active_units":
            out[metric] = float(evaluate.active_units(model, guided("active_units"), test))
        elif metric == "seconds_per_epoch":
            out[metric] = float(np.mean([row["seconds"] for row in history]))
    return {metric: out[metric] for metric in spec.metrics if metric in out}, stderr


#: bump when the judge's architecture or training changes: cached judges of another version are retrained
JUDGE_VERSION = 2  # 2: the rate decays along a half cosine, 10 epochs on the image sets (1: constant, 6)
JUDGE_EPOCHS = {"mnist": 10, "fashion-mnist": 10, "digits": 40, "digits-binary": 40}


@functools.cache
def data_classifier(data: str, data_dir: str | None) -> tuple[Any, torch.nn.Sequential, dict[str, Any]]:
    """The data set, the judge of its samples and what the judge is worth (once per process: runs of a comparison
    share it)."""

    labelled = load(data, data_dir)
    return (labelled, *judge(labelled, data, data_dir))


def judge(labelled: Any, data: str, data_dir: str | None) -> tuple[torch.nn.Sequential, dict[str, Any]]:
    """The convolutional judge of an image data set (:func:`ppdgm.evaluate.train_judge`) and what it is worth: its
    accuracy on the test split, and the inception score of real test rows on the same scale (the same rows and
    splits as the samples'). Trained once per data directory and cached there (``ppdgm-judges/``, keyed by a hash
    of the training rows); the cache is skipped, with the judge trained in memory, where the folder is read-only."""

    train, labels = labelled.tensor("train"), labelled.labels["train"]
    shape = labelled.image_shape or (int(train.shape[1] ** 0.5),) * 2
    epochs = JUDGE_EPOCHS.get(data, 10)
    key = checkpoints.digest([train, labels, JUDGE_VERSION, epochs])[:16]
    path = Path(data_dir or default_data_dir()) / "ppdgm-judges" / f"{data}-convnet-{key}.pt"
    if path.exists():
        saved = checkpoints.load(path, "judge", "delete it to train the judge again")
        net = evaluate.train_judge(train[:1], labels, shape, epochs=0)  # the architecture
        net.load_state_dict(saved["state"])
        return net.eval(), saved["info"]
    net = evaluate.train_judge(train, labels, shape, epochs=epochs)
    test = labelled.tensor("test")[:CLASSIFIER_SAMPLES]
    real_is, real_spread = fidelity.inception_score(test, fidelity.ClassifierLogits(net))
    info = {
        "kind": f"convnet ({epochs} epochs)",
        "test_accuracy": evaluate.accuracy(net, labelled.tensor("test"), labelled.labels["test"]),
        "real_inception_score": real_is,
        "real_inception_spread": real_spread,
        "rows": len(test),
    }
    with contextlib.suppress(checkpoints.OutputError):  # a read-only data folder: the judge stays in memory
        checkpoints.save({"state": net.state_dict(), "info": info}, path, "judge")
    return net, info


def judge_line(spec: Spec) -> str | None:
    """What judged the samples of ``spec``'s table, in one line (``None`` when nothing did)."""
    if not set(spec.metrics) & set(CLASSIFIER_METRICS):
        return None
    if spec.inception_weights:
        return f"samples judged by Inception-v3 ({spec.inception_weights})"
    info = data_classifier(spec.data, spec.data_dir)[2]
    return (
        f"samples judged by a {info['kind']} classifier of {spec.data}: {info['test_accuracy']:.2%} of the test "
        f"rows right; real test rows score inception score {info['real_inception_score']:.2f} ± "
        f"{info['real_inception_spread']:.2f} on it ({info['rows']} rows in 10 splits; the samples: "
        f"{CLASSIFIER_SAMPLES} in 10 splits); inception scores are ± the spread over their 10 splits"
    )


def _classifier_metrics(spec: Spec, model: Callable, test: Data) -> dict[str, float]:
    """Inception score (torchmetrics, 10 splits), classes covered, FID and the accuracy of class-conditional
    samples, judged by a classifier trained on the data set's training rows (or Inception-v3 for IS and FID when
    the spec gives ``inception_weights``)."""

    labelled, classifier, _ = data_classifier(spec.data, spec.data_dir)
    train = labelled.tensor("train")
    out: dict[str, float] = {}
    conditional = not torch.is_tensor(test)  # the test rows carry the spec's columns: labels are inputs
    condition = fidelity.balanced_labels(CLASSIFIER_SAMPLES, labelled.classes or 10) if conditional else None
    samples = sample_rows(model, CLASSIFIER_SAMPLES, like=test, condition=condition, mean=True).cpu()
    samples = samples.reshape(CLASSIFIER_SAMPLES, -1)
    if spec.inception_weights:
        shape = labelled.image_shape or (1, *([int(train.shape[1] ** 0.5)] * 2))
        scores = fidelity.inception_network(spec.inception_weights, shape, "logits_unbiased")
        features = fidelity.inception_network(spec.inception_weights, shape, "2048")
    else:
        scores, features = fidelity.ClassifierLogits(classifier), classifier[:-1]
    if "inception_score" in spec.metrics or "class_coverage" in spec.metrics:
        mean, std = fidelity.inception_score(samples, scores)
        out["inception_score"], out["inception_score_std"] = mean, std
        out["class_coverage"] = evaluate.classifier_scores(classifier, samples)["class_coverage"]
    if "fid" in spec.metrics:
        out["fid"] = fidelity.frechet_distance(train[:CLASSIFIER_SAMPLES], samples, features)
    if "conditional_accuracy" in spec.metrics:
        if condition is None:
            raise UsageError("conditional_accuracy needs a class-conditional model (data columns x,y)")
        out["conditional_accuracy"] = fidelity.class_accuracy(classifier, samples, condition)
    return out

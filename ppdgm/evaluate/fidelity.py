"""Sample-quality metrics of image models, computed by torchmetrics: inception score, FID, and the accuracy
of class-conditional samples.

Why torchmetrics: it computes the inception score and the Fréchet distance with any feature network
(``feature=`` an ``nn.Module``), so the same code serves the standard Inception-v3 (CIFAR-10, SVHN) and a
classifier of the data set (digits, MNIST, where the paper scores samples with an MNIST classifier), and
the tests run it on tiny random networks with no download. Its own Inception-v3 is torch-fidelity's
port of the TF-Slim network the scores were defined with; ppdgm builds it from a weights file the user
gives (``inception_network(path)``; the file is ``pt_inception-2015-12-05-6726825d.pth`` from the
torch-fidelity releases), so nothing is fetched at run time. That needs ``pip install torch-fidelity``
(the ``ppdgm[fid]`` extra), which the rest of ppdgm does not.

Samples are ppdgm rows: flat ``(N, C*H*W)`` intensities in [0, 1], with the image shape given.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ppdgm.errors import MissingResourceError, UsageError


def _quietly(make: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():  # torchmetrics warns that IS/FID keep features in memory: by design here
        warnings.simplefilter("ignore", UserWarning)
        return make()


class ClassifierLogits(nn.Module):
    """A classifier of flat rows as a torchmetrics feature network: logits of ``(N, C*H*W)`` rows."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.classifier(rows.reshape(rows.shape[0], -1).float())


class InceptionImages(nn.Module):
    """Inception-v3 (torch-fidelity's) on ppdgm rows: reshaped to images, grey repeated to 3 channels, as 8-bit."""

    def __init__(self, network: nn.Module, image_shape: Sequence[int]) -> None:
        super().__init__()
        self.network, self.image_shape = network, tuple(image_shape)
        self.num_features = getattr(network, "num_features", None)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        shape = self.image_shape if len(self.image_shape) == 3 else (1, *self.image_shape)
        images = rows.reshape(rows.shape[0], *shape)
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        return self.network((images.clamp(0, 1) * 255).round().to(torch.uint8))


def check_inception(weights: str | Path) -> Path:
    """The Inception weights' path, or :class:`MissingResourceError` naming what is missing (the file, or
    torch-fidelity): a comparison asks before any run trains."""
    import importlib.util

    path = Path(weights)
    if not path.is_file():
        raise MissingResourceError(
            f"Inception weights {path} not found; download pt_inception-2015-12-05-6726825d.pth from the "
            "torch-fidelity releases once and pass its path"
        )
    if importlib.util.find_spec("torch_fidelity") is None:
        raise MissingResourceError("the standard Inception network needs torch-fidelity: pip install 'ppdgm[fid]'")
    return path


def inception_network(weights: str | Path, image_shape: Sequence[int], feature: str = "2048") -> nn.Module:
    """torch-fidelity's Inception-v3 with the weights at ``weights`` (no download), taking ppdgm rows.

    ``feature``: ``"2048"`` (pool features, for FID) or ``"logits_unbiased"`` (for the inception score).
    """
    path = check_inception(weights)
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as err:  # pragma: no cover - torchmetrics is a dependency
        raise MissingResourceError(f"torchmetrics is needed for Inception features ({err})") from err
    try:
        network = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=[feature], feature_extractor_weights_path=str(path)
        )
    except (ModuleNotFoundError, ImportError) as err:
        raise MissingResourceError(
            f"the standard Inception network needs torch-fidelity: pip install 'ppdgm[fid]' ({err})"
        ) from err
    return InceptionImages(network, image_shape)


class _Sized(nn.Module):
    """A feature network with its ``num_features`` (torchmetrics would probe it with a 299x299 8-bit image)."""

    def __init__(self, network: nn.Module, num_features: int) -> None:
        super().__init__()
        self.network, self.num_features = network, num_features

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.network(rows).reshape(rows.shape[0], -1)


@torch.no_grad()
def inception_score(samples: torch.Tensor, features: nn.Module, splits: int = 10) -> tuple[float, float]:
    """Salimans et al. (2016): exp(E_x KL(p(y|x) || p(y))) over ``splits`` parts of the samples; (mean, std).

    ``features`` maps rows to class logits: a classifier wrapped in :class:`ClassifierLogits`, or
    :func:`inception_network` with ``feature="logits_unbiased"``.
    """
    from torchmetrics.image.inception import InceptionScore

    if samples.shape[0] < splits:
        raise UsageError(f"the inception score needs at least {splits} samples (one per split), got {samples.shape[0]}")
    metric = _quietly(lambda: InceptionScore(feature=features, splits=splits))
    metric.update(samples)
    mean, std = _quietly(metric.compute)  # one split: the std is undefined (NaN), said once here
    return float(mean), float(std)


@torch.no_grad()
def frechet_distance(real: torch.Tensor, generated: torch.Tensor, features: nn.Module, chunk: int = 500) -> float:
    """Heusel et al. (2017): the Fréchet distance between Gaussians fitted to the features of real and
    generated rows (FID with :func:`inception_network` features)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if real.shape[0] < 2 or generated.shape[0] < 2:
        raise UsageError("the Fréchet distance needs at least 2 real and 2 generated rows")
    sized = _Sized(features, int(features(real[:2]).reshape(2, -1).shape[-1]))
    metric = _quietly(lambda: FrechetInceptionDistance(feature=sized, reset_real_features=True))
    for rows, is_real in ((real, True), (generated, False)):
        for part in rows.split(chunk):
            metric.update(part, real=is_real)
    return float(metric.compute())


@torch.no_grad()
def class_accuracy(classifier: nn.Module, rows: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of ``rows`` the classifier assigns to ``labels`` (integer classes, or one-hot rows)."""
    if labels.dim() == 2:
        labels = labels.argmax(-1)
    predicted = classifier(rows.reshape(rows.shape[0], -1).float()).argmax(-1)
    return float((predicted == labels.to(predicted.device)).double().mean())


def balanced_labels(n: int, classes: int) -> torch.Tensor:
    """``n`` one-hot labels cycling through the classes: the conditions class-conditional samples are drawn for."""
    return nn.functional.one_hot(torch.arange(n) % classes, classes).float()

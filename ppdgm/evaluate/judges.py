"""Classifiers that judge samples: trained on labelled rows, cached per data folder."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import pyro.poutine as poutine
import torch

from ppdgm.errors import UsageError
from ppdgm.programs.batch import Batch, Data


def train_classifier(
    x: torch.Tensor, labels: torch.Tensor, hidden: int = 128, epochs: int = 60, seed: int = 0
) -> torch.nn.Sequential:
    """A small MLP classifier ``x -> class logits`` trained on labelled data (full-batch Adam), for sample scores."""
    gen = torch.Generator().manual_seed(seed)
    num_classes = int(labels.max()) + 1
    net = torch.nn.Sequential(
        torch.nn.Linear(x[0].numel(), hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    rows = x.reshape(x.shape[0], -1)
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(net(rows), labels.long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def train_judge(
    x: torch.Tensor,
    labels: torch.Tensor,
    image_shape: Sequence[int],
    epochs: int = 4,
    batch_size: int = 128,
    seed: int = 0,
    channels: tuple[int, int] = (32, 64),
    lr: float = 1e-3,
) -> torch.nn.Sequential:
    """A small convolutional classifier of images, ``flat rows -> class logits``, to judge samples by (inception
    score, FID features, the accuracy of class-conditional samples): two 3x3 convolutions with ReLU, each followed
    by 2x2 max-pooling, then a 128-unit hidden layer (the FID features) and the class logits. Adam, its rate
    decayed from ``lr`` to 0 along a half cosine over all steps, minibatches of ``batch_size`` in a seeded order.
    On MNIST, 10 epochs (the comparisons' setting) classify 99.24% of the test digits trained on one CPU thread
    (docs/paper.md; at a constant rate 6 epochs gave 98.97%); ``ppdgm.compare`` prints the accuracy of the judge it
    uses beside every table."""
    shape = tuple(int(s) for s in image_shape)
    shape = (1, *shape) if len(shape) == 2 else shape  # grey images: one channel
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.get_rng_state()
    torch.manual_seed(seed)  # the layers' initial weights; the caller's stream is given back below
    side = [shape[1] // 4, shape[2] // 4]
    net = torch.nn.Sequential(
        torch.nn.Unflatten(1, shape),
        torch.nn.Conv2d(shape[0], channels[0], 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(channels[0], channels[1], 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(channels[1] * side[0] * side[1], 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, int(labels.max()) + 1),
    )
    torch.set_rng_state(torch_state)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    rows = x.reshape(x.shape[0], -1).float()
    targets = labels.long()
    total = epochs * math.ceil(len(rows) / batch_size)
    step = 0
    net.train()
    for _ in range(epochs):
        for index in torch.randperm(len(rows), generator=gen).split(batch_size):
            loss = torch.nn.functional.cross_entropy(net(rows[index]), targets[index])
            opt.zero_grad()
            loss.backward()
            opt.param_groups[0]["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.step()
            step += 1
    return net.eval()


@torch.no_grad()
def accuracy(classifier: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, chunk: int = 2000) -> float:
    """The share of rows ``x`` that ``classifier`` assigns to their class."""
    rows = x.reshape(x.shape[0], -1).float()
    right = sum(
        int((classifier(part).argmax(-1) == y).sum()) for part, y in zip(rows.split(chunk), labels.split(chunk))
    )
    return right / len(rows)


@torch.no_grad()
def classifier_scores(classifier: torch.nn.Module, samples: torch.Tensor, min_share: float = 0.02) -> dict[str, float]:
    """Sample quality and class coverage judged by a classifier of the data (Salimans et al. 2016's score).

    ``inception_score`` = exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over the samples: high when
    each sample is classified confidently and the classes are balanced (at most the number of classes).
    ``class_coverage``: the number of classes that receive at least ``min_share`` of the samples (argmax).
    """
    probs = torch.softmax(classifier(samples.reshape(samples.shape[0], -1)).double(), -1)
    marginal = probs.mean(0, keepdim=True)
    kl = (probs * (probs.clamp_min(1e-30).log() - marginal.clamp_min(1e-30).log())).sum(-1)
    share = torch.bincount(probs.argmax(-1), minlength=probs.shape[-1]).double() / probs.shape[0]
    return {"inception_score": float(kl.mean().exp()), "class_coverage": float((share >= min_share).sum())}


@torch.no_grad()
def label_accuracy(guide: Callable, rows: Data, chunk: int = 1000) -> float:
    """How often a semi-supervised guide's proposal for a partially observed label picks the true class.

    ``rows`` are ``(x, y, labelled)`` columns (one-hot ``y``, a boolean mask, as in
    :class:`~ppdgm.models.SemiSupervisedVAE`); every row is shown to the guide as unlabelled, and its
    ``<label>_unobserved`` site's most probable class is compared with ``y``.
    """

    if not isinstance(rows, Batch):
        raise UsageError("label_accuracy needs data columns (x, y, labelled)")
    masks = [k for k, c in rows.items() if c is not None and c.dtype == torch.bool]
    if len(masks) != 1:
        raise UsageError(f"label_accuracy needs one boolean mask column, found {len(masks)} in {rows.describe()}")
    correct, total = 0.0, 0
    for part in rows.split(chunk):
        hidden = part.replace({masks[0]: torch.zeros_like(cast(torch.Tensor, part.get(masks[0])))})
        with poutine.trace() as tracer, poutine.block(hide_types=["param"]):
            guide(*hidden.args, **hidden.kwargs)
        sites = [s for n, s in tracer.trace.nodes.items() if n.endswith("_unobserved") and s["type"] == "sample"]
        if not sites:
            raise UsageError("the guide has no '<site>_unobserved' sample site (a partially observed label)")
        probs = sites[0]["fn"].probs  # type: ignore[attr-defined]
        labels = next(c for _, c in part.items() if c is not None and c.shape[1:] == probs.shape[-1:])
        correct += float((probs.argmax(-1) == labels.argmax(-1)).double().sum())
        total += len(part)
    return correct / total

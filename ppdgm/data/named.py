"""Data sets: embedded digits, binarized MNIST from a data directory, synthetic 2-D mixtures.

Every data set is a :class:`Dataset` of float tensors ``train``, ``valid`` and ``test`` with one
datapoint per row, plus the image shape for plotting and, for synthetic data, the true log density.

* ``digits`` — scikit-learn's 8x8 digits (ships inside scikit-learn), scaled to [0, 1].
* ``digits-binary`` — the same, thresholded at 0.5.
* ``binarized-mnist`` — the fixed binarization of Larochelle & Murray (2011), 50k/10k/10k. Read from
  ``data_dir`` (default ``$PPDGM_DATA`` or ``~/.cache/ppdgm``) as ``binarized_mnist.npz`` (bit-packed
  arrays ``train``/``valid``/``test`` of shape (N, 98)) or the classic
  ``binarized_mnist_{train,valid,test}.amat`` text files; when neither is there the .amat files are
  fetched into ``data_dir`` (a clear error says what to do when offline).
* ``mnist``, ``fashion-mnist``, ``svhn``, ``cifar10`` — image sets in torchvision's file layout, read
  from ``data_dir`` (:mod:`ppdgm.data.images`), pixel intensities in [0, 1]; ``transform="binarize"`` or
  ``"dequantize"`` in ``fit`` for likelihood models.
* ``ring8`` / ``grid25`` — mixtures of 8 Gaussians on a circle and 25 on a 5x5 grid.

Labelled sets (the digits and the image sets) take ``columns="x,y"`` (one-hot labels as a second column,
for conditional models) or ``columns="x,y,labelled"`` with ``labelled=`` a fraction or a count per class
(semi-supervised models); ``load("mnist", columns="x,y")``.
"""

from __future__ import annotations

import math
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppdgm.data.dataset import SPLITS, Dataset, default_data_dir
from ppdgm.data.images import COLUMNS, DataUnavailableError, evaluation_mask, labelled_mask, load_images
from ppdgm.data.streams import is_stream
from ppdgm.errors import UsageError
from ppdgm.programs.batch import Batch, as_batch, first_column

MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"


def _split_rows(x: np.ndarray, n_valid: int, n_test: int, seed: int) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(len(x))
    test, valid, train = order[:n_test], order[n_test : n_test + n_valid], order[n_test + n_valid :]
    return x[train], x[valid], x[test]


def _tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32) for a in arrays]


def load_digits(binary: bool = False, split_seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8x8 digits scaled to [0, 1]; 1,300 train / 200 valid / 297 test."""
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    x = digits.data.astype(np.float32) / 16.0
    if binary:
        x = (x > 0.5).astype(np.float32)
    train, valid, test = _tensors(*_split_rows(x, 200, 297, split_seed))
    labels = dict(zip(SPLITS, (torch.as_tensor(y) for y in _split_rows(digits.target, 200, 297, split_seed))))
    return Dataset("digits-binary" if binary else "digits", train, valid, test, (8, 8), binary, labels=labels)


def _read_amat(path: Path) -> np.ndarray:
    return np.loadtxt(path, dtype=np.float32).reshape(-1, 784)


def load_binarized_mnist(data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """Binarized MNIST (50k/10k/10k) from ``data_dir``; see the module docstring for the formats."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    npz = root / "binarized_mnist.npz"
    amats = {s: root / f"binarized_mnist_{s}.amat" for s in SPLITS}
    if npz.exists():
        with np.load(npz) as packed:
            arrays = [np.unpackbits(packed[s], axis=1)[:, :784] for s in SPLITS]
    else:
        missing = [s for s, p in amats.items() if not p.exists()]
        if missing and not download:
            raise DataUnavailableError(f"binarized MNIST is not in {root} (looked for {npz.name} and the .amat files)")
        for split in missing:
            _fetch(MNIST_URL.format(split=split), amats[split])
        arrays = [_read_amat(amats[s]) for s in SPLITS]
    train, valid, test = _tensors(*arrays)
    return Dataset("binarized-mnist", train, valid, test, (28, 28), True)


def _fetch(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        raise DataUnavailableError(
            f"could not download {url} ({err}). Offline? Put binarized_mnist.npz or the three binarized_mnist_"
            f"{{train,valid,test}}.amat files into {target.parent} (or point data_dir= (CLI: --data-dir) at them)"
        ) from err
    os.replace(partial, target)


# ---------------------------------------------------------------------------------------------- 2-D mixtures
def mixture_centres(name: str) -> tuple[torch.Tensor, float]:
    """Component means and the common standard deviation of a synthetic mixture."""
    if name == "ring8":
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return torch.stack([2 * angles.cos(), 2 * angles.sin()], -1).float(), 0.02
    if name == "grid25":
        grid = torch.arange(-4.0, 5.0, 2.0)
        return torch.cartesian_prod(grid, grid), 0.05
    raise UsageError(f"unknown mixture {name!r}; known: ring8, grid25")


def mixture_log_density(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exact log density of a synthetic mixture (equal weights, isotropic components)."""
    centres, std = mixture_centres(name)

    def log_density(x: torch.Tensor) -> torch.Tensor:
        c = centres.to(x)
        sq = (x.unsqueeze(-2) - c).pow(2).sum(-1)
        log_comp = -0.5 * sq / std**2 - math.log(2 * math.pi * std**2)
        return torch.logsumexp(log_comp, -1) - math.log(len(c))

    return log_density


def _digits_inverted(split_seed: int = 0) -> Dataset:
    """Unpaired rows [digit | another digit, inverted (1 - x)]: CycleGAN's two domains from the embedded digits."""
    digits = load_digits(split_seed=split_seed)
    return unpaired(digits, transformed(digits, lambda x: 1 - x, "digits-inverted-only"), "digits-inverted")


def load_mixture(name: str, n_train: int = 10000, n_valid: int = 1000, n_test: int = 1000, seed: int = 0) -> Dataset:
    """Samples from ``ring8`` or ``grid25`` with a fixed seed, and the mixture's true log density."""
    centres, std = mixture_centres(name)
    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_valid + n_test
    comp = torch.randint(len(centres), (n,), generator=gen)
    x = centres[comp] + std * torch.randn(n, 2, generator=gen)
    train, valid, test = x[:n_train], x[n_train : n_train + n_valid], x[n_train + n_valid :]
    return Dataset(name, train, valid, test, None, False, mixture_log_density(name))


def with_columns(data: Dataset, columns: str, labelled: float | int | None = None, seed: int = 0) -> Dataset:
    """A labelled in-memory data set with its labels as columns: ``"x,y"`` (one-hot, float) or ``"x,y,labelled"``
    (semi-supervised: ``labelled`` is a fraction of the training rows or a count per class; the evaluation splits'
    rows are all marked unlabelled, see :func:`ppdgm.data.images.evaluation_mask`). ``"x"`` returns ``data``
    unchanged."""

    if columns not in COLUMNS:
        raise UsageError(f"columns must be one of {COLUMNS}, got {columns!r}")
    if columns == "x":
        return data
    if data.labels is None:
        raise UsageError(f"data set {data.name!r} has no labels to make columns {columns!r} of")
    classes = int(max(int(y.max()) for y in data.labels.values())) + 1
    splits = {}
    for split in SPLITS:
        x, y = data.tensor(split), data.labels[split]
        onehot = torch.nn.functional.one_hot(y, classes).float()
        if columns == "x,y":
            splits[split] = Batch((x, onehot))
        else:
            mask = labelled_mask(y, labelled, seed) if split == "train" else evaluation_mask(len(y))
            splits[split] = Batch((x, onehot, mask))
    return Dataset(
        f"{data.name}[{columns}]", splits["train"], splits["valid"], splits["test"], data.image_shape, data.binary,
        labels=data.labels, classes=classes,
    )  # fmt: skip


def _digits(binary: bool, columns: str = "x", labelled: float | int | None = None, split_seed: int = 0) -> Dataset:
    return with_columns(load_digits(binary, split_seed), columns, labelled, split_seed)


def _images(name: str) -> Callable[..., Dataset]:
    def load_named(data_dir: str | Path | None = None, **options: Any) -> Dataset:

        return load_images(name, data_dir, **options)

    return load_named


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": lambda data_dir=None, **kw: _digits(False, **kw),
    "digits-binary": lambda data_dir=None, **kw: _digits(True, **kw),
    "mnist": _images("mnist"),
    "fashion-mnist": _images("fashion-mnist"),
    "svhn": _images("svhn"),
    "cifar10": _images("cifar10"),
    "binarized-mnist": lambda data_dir=None, **kw: load_binarized_mnist(data_dir, **kw),
    "digits-inverted": lambda data_dir=None, **kw: _digits_inverted(**kw),
    "ring8": lambda data_dir=None, **kw: load_mixture("ring8", **kw),
    "grid25": lambda data_dir=None, **kw: load_mixture("grid25", **kw),
}


def available_datasets() -> list[str]:
    return sorted(_LOADERS)


def load(name: str, data_dir: str | Path | None = None, fraction: float | None = None, **options) -> Dataset:
    """Load a data set by name (see :func:`available_datasets`); ``fraction``: train on that share of the training
    rows only (:func:`training_fraction`)."""
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise UsageError(f"unknown data set {name!r}; known: {', '.join(available_datasets())}") from None
    dataset = loader(data_dir=data_dir, **options)
    return dataset if fraction is None else training_fraction(dataset, fraction)


def is_fraction(value: Any) -> bool:
    """Whether ``value`` is a share in (0, 1] (a number, not a bool)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 < value <= 1


def training_fraction(data: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """``data`` with ``fraction`` of its training rows: a seeded subset, balanced over classes when the data set has
    labels (each class keeps the same share), the same whatever the method or the training seed; the validation and
    test splits are unchanged. The paper's 1% and 10% rows (Hu et al. 2018, Sec. 5)."""
    if not is_fraction(fraction):
        raise UsageError(f"fraction must be a share of the training rows in (0, 1], got {fraction!r}")
    if fraction == 1:
        return data
    train = data.train
    if not (torch.is_tensor(train) or isinstance(train, Batch) or hasattr(train, "subset")):
        raise UsageError(f"fraction needs the training rows in memory; {data.name!r} streams them")
    rows = len(train)
    labels = (data.labels or {}).get("train")
    if labels is not None:
        keep = labelled_mask(labels, float(fraction), seed).nonzero().squeeze(1)
    else:
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(rows, generator=generator)[: max(1, round(fraction * rows))].sort().values
    subset = train.subset(keep) if hasattr(train, "subset") else train[keep.to(first_column(train)[1].device)]
    new_labels = (
        None if data.labels is None else {**data.labels, **({"train": labels[keep]} if labels is not None else {})}
    )
    return replace(
        data, name=f"{data.name} ({fraction * 100:g}% of the training rows)", train=subset, labels=new_labels
    )


def as_dataset(data: Any, data_dir: str | Path | None = None) -> Dataset:
    """Accept a name, a :class:`Dataset`, a tensor/array of training rows, a tuple/dict of columns, or a torch
    ``Dataset``/``IterableDataset``/``DataLoader`` (no valid/test split)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str):
        return load(data, data_dir)
    if is_stream(data):
        source = data.dataset if hasattr(data, "dataset") else data
        return Dataset(type(source).__name__, data)
    if isinstance(data, Batch | tuple | list | Mapping):
        rows = data if isinstance(data, Batch) else as_batch(data)
        _, first = first_column(rows)
        binary = bool(first.is_floating_point() and ((first == 0) | (first == 1)).all())
        return Dataset("columns", rows, rows[:0], rows[:0], None, binary)
    if isinstance(data, np.ndarray | torch.Tensor):
        x = torch.as_tensor(data)
        if not (torch.is_tensor(data) and x.is_floating_point()):  # a tensor's float64 is kept, as SVI keeps it
            x = x.float()
        if x.dim() < 1 or x.shape[0] == 0:
            raise UsageError(f"data must have one datapoint per row, got shape {tuple(x.shape)}")
        empty = x[:0]
        return Dataset("tensor", x, empty, empty, None, bool(((x == 0) | (x == 1)).all()))
    raise UsageError(
        "data must be a data set name, a ppdgm Dataset, a tensor, or a tuple/dict of columns, got "
        f"{type(data).__name__}"
    )


def unpaired(a: Dataset, b: Dataset, name: str | None = None, seed: int = 0) -> Dataset:
    """Rows ``[a_i | b_j]`` joining two domains with no pairing: each domain's rows shuffled on their own.

    The data of a CycleGAN. Labels, when both domains have them, are kept per domain as
    ``labels["<split>_a"]`` and ``labels["<split>_b"]``.
    """
    gen = torch.Generator().manual_seed(seed)
    splits, labels = {}, {}
    for split in SPLITS:
        xa, xb = a.tensor(split), b.tensor(split)
        n = min(xa.shape[0], xb.shape[0])
        ia, ib = torch.randperm(xa.shape[0], generator=gen)[:n], torch.randperm(xb.shape[0], generator=gen)[:n]
        splits[split] = torch.cat([xa[ia].reshape(n, -1), xb[ib].reshape(n, -1)], -1)
        if a.labels is not None and b.labels is not None:
            labels[f"{split}_a"], labels[f"{split}_b"] = a.labels[split][ia], b.labels[split][ib]
    return Dataset(
        name or f"{a.name}+{b.name}", splits["train"], splits["valid"], splits["test"], labels=labels or None
    )


def transformed(data: Dataset, fn: Callable[[torch.Tensor], torch.Tensor], name: str) -> Dataset:
    """The same data set with ``fn`` applied to every row (e.g. rotated or inverted images), labels kept."""
    train, valid, test = (fn(data.tensor(s)) for s in SPLITS)
    return Dataset(name, train, valid, test, data.image_shape, data.binary, labels=data.labels)

"""Named image data sets read from a data directory: ``mnist``, ``fashion-mnist``, ``svhn``, ``cifar10``.

The files are the ones torchvision downloads, in torchvision's layout, so a folder torchvision filled
works as it is:

============== ======================================================================================
``mnist``      ``<dir>/MNIST/raw/{train,t10k}-images-idx3-ubyte``, ``...-labels-idx1-ubyte`` (or ``.gz``)
``fashion-     ``<dir>/FashionMNIST/raw/`` with the same four names
mnist``
``svhn``       ``<dir>/train_32x32.mat``, ``<dir>/test_32x32.mat``
``cifar10``    ``<dir>/cifar-10-batches-py/data_batch_{1..5}``, ``test_batch``
============== ======================================================================================

ppdgm reads these formats itself (IDX, MATLAB via SciPy, CIFAR's pickled batches through an unpickler that
builds NumPy arrays and nothing else), so torchvision is needed only to *download*: when a file is missing
and torchvision is installed, ``download=True`` asks torchvision for it; otherwise the error says which
files to put where. Images stay in memory as 8-bit values (MNIST 47 MB, CIFAR-10 184 MB, SVHN 226 MB) and
are turned into float rows in [0, 1] per minibatch by :class:`ImageSet`, a map-style torch ``Dataset``,
read through :mod:`ppdgm.data.streams` a minibatch at a time (one gather per batch; a DataLoader with workers
reads item by item).

Splits: the last 10,000 training images are the validation split for MNIST and Fashion-MNIST, the last
5,000 for SVHN and CIFAR-10; the test split is the official one.
"""

from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from ppdgm.data.dataset import Dataset, default_data_dir, labelled_subset
from ppdgm.errors import MissingResourceError, UsageError

COLUMNS = ("x", "x,y", "x,y,labelled")


class ImageSet(TorchDataset):
    """8-bit images (N, C, H, W) with labels, read as flat float rows in [0, 1].

    ``columns`` chooses what an item is: ``"x"`` the image row; ``"x,y"`` with the one-hot label (float);
    ``"x,y,labelled"`` also a boolean saying whether the label may be used (semi-supervised training; the
    one-hot row of an unlabelled item is still the true class, so a model must read it only through
    ``obs_mask``).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: int = 10,
        columns: str = "x",
        labelled: torch.Tensor | None = None,
    ) -> None:
        if columns not in COLUMNS:
            raise UsageError(f"columns must be one of {COLUMNS}, got {columns!r}")
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise UsageError(f"ImageSet needs uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels, self.classes, self.columns = images, labels.long(), classes, columns
        self.labelled = labelled if labelled is not None else torch.ones(len(labels), dtype=torch.bool)

    @property
    def image_shape(self) -> tuple[int, ...]:
        channels, height, width = self.images.shape[1:]
        return (height, width) if channels == 1 else (channels, height, width)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> Any:
        out = tuple(column[0] for column in self.read_batch(torch.as_tensor([index])))
        return out[0] if len(out) == 1 else out

    def read_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The columns of rows ``index`` in one gather (what :mod:`~ppdgm.data.streams` reads, not items)."""
        x = self.images[index].reshape(len(index), -1).float() / 255
        if self.columns == "x":
            return (x,)
        y = torch.nn.functional.one_hot(self.labels[index], self.classes).float()
        return (x, y) if self.columns == "x,y" else (x, y, self.labelled[index])

    def subset(self, rows: slice) -> ImageSet:
        return ImageSet(self.images[rows], self.labels[rows], self.classes, self.columns, self.labelled[rows])

    def with_columns(self, columns: str, labelled: torch.Tensor | None = None) -> ImageSet:
        return ImageSet(self.images, self.labels, self.classes, columns, labelled)


class DataUnavailableError(MissingResourceError):
    """A data set is neither in the data directory nor reachable for download."""


# ---------------------------------------------------------------------------------------------- file formats
def _open(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes()
    packed = path.with_name(path.name + ".gz")
    return gzip.decompress(packed.read_bytes())


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): big-endian magic, dimensions, unsigned bytes."""
    raw = _open(path)
    if raw[:2] != b"\0\0" or raw[2] != 8:
        raise UsageError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).copy()
    if data.size != int(np.prod(shape)):
        raise UsageError(f"{path} is truncated: {data.size} bytes for shape {shape}")
    return data.reshape(shape)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles NumPy arrays, lists, dicts and strings; refuses every other global (a data file runs no code)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a data file")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images (N, 3, 32, 32) uint8 and labels."""
    with open(path, "rb") as f:
        batch = _ArraysOnly(io.BytesIO(f.read()), encoding="latin1").load()
    data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(batch["labels"], dtype=np.int64)


def read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An SVHN ``*_32x32.mat``: images (N, 3, 32, 32) uint8 and labels 0-9 (the file's 10 is the digit 0)."""
    from scipy.io import loadmat

    mat = loadmat(path)
    images = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1))
    labels = mat["y"].reshape(-1).astype(np.int64) % 10
    return images, labels


# ---------------------------------------------------------------------------------------------- the sets
MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)  # fmt: skip


def _mnist_like(folder: str) -> Callable[[Path], tuple[np.ndarray, ...]]:
    def read(root: Path) -> tuple[np.ndarray, ...]:
        raw = root / folder / "raw"
        train_x, train_y, test_x, test_y = (read_idx(raw / name) for name in MNIST_FILES)
        return train_x[:, None], train_y, test_x[:, None], test_y

    return read


def _svhn(root: Path) -> tuple[np.ndarray, ...]:
    return (*read_svhn(root / "train_32x32.mat"), *read_svhn(root / "test_32x32.mat"))


def _cifar10(root: Path) -> tuple[np.ndarray, ...]:
    folder = root / "cifar-10-batches-py"
    parts = [read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test = read_cifar_batch(folder / "test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), *test


#: name: (reader, the files it needs relative to the data directory, torchvision class, validation rows)
IMAGE_SETS: dict[str, tuple[Callable[[Path], tuple[np.ndarray, ...]], tuple[str, ...], str, int]] = {
    "mnist": (_mnist_like("MNIST"), tuple(f"MNIST/raw/{f}" for f in MNIST_FILES), "MNIST", 10_000),
    "fashion-mnist": (
        _mnist_like("FashionMNIST"),
        tuple(f"FashionMNIST/raw/{f}" for f in MNIST_FILES),
        "FashionMNIST",
        10_000,
    ),  # fmt: skip
    "svhn": (_svhn, ("train_32x32.mat", "test_32x32.mat"), "SVHN", 5_000),
    "cifar10": (
        _cifar10,
        tuple(f"cifar-10-batches-py/{b}" for b in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")),
        "CIFAR10",
        5_000,
    ),  # fmt: skip
}


def _missing(root: Path, files: tuple[str, ...]) -> list[str]:
    return [f for f in files if not (root / f).exists() and not (root / (f + ".gz")).exists()]


def _download(name: str, root: Path, where: str) -> None:
    """Ask torchvision to download ``name`` into ``root`` (its own layout); a clear error without it or offline,
    listing the missing files (``where``)."""
    cls_name = IMAGE_SETS[name][2]
    try:
        import torchvision.datasets as tv
    except ImportError:
        raise DataUnavailableError(
            f"{name} is not in {root} and torchvision (which downloads it) is not installed. Put these files there "
            f"(torchvision's layout; .gz is fine for MNIST's), or point data_dir= (CLI: --data-dir) at them: {where}"
        ) from None
    cls = getattr(tv, cls_name)
    try:
        for train in (True, False):
            if cls_name == "SVHN":
                cls(str(root), split="train" if train else "test", download=True)
            else:
                cls(str(root), train=train, download=True)
    except Exception as err:  # torchvision raises URLError, RuntimeError... when offline
        raise DataUnavailableError(
            f"could not download {name} with torchvision ({err}). Offline? Put these files into place, or point "
            f"data_dir= (CLI: --data-dir) at them: {where}"
        ) from err


def load_images(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = True,
    columns: str = "x",
    labelled: float | int | None = None,
    split_seed: int = 0,
) -> Any:
    """A named image set as a :class:`ppdgm.data.Dataset` of :class:`ImageSet` splits (see the module docstring).

    Args:
        name: ``mnist``, ``fashion-mnist``, ``svhn`` or ``cifar10``.
        data_dir: the data directory (default ``$PPDGM_DATA`` or ``~/.cache/ppdgm``).
        download: fetch missing files through torchvision when it is installed.
        columns: ``"x"``, ``"x,y"`` (one-hot labels) or ``"x,y,labelled"`` (semi-supervised).
        labelled: with ``"x,y,labelled"``, the labelled training rows: a fraction in (0, 1] of them, or a
            count per class (drawn with ``split_seed``, the same number of each class).
    """

    if name not in IMAGE_SETS:
        raise UsageError(f"unknown image set {name!r}; known: {', '.join(IMAGE_SETS)}")
    reader, files, _, n_valid = IMAGE_SETS[name]
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    missing = _missing(root, files)
    if missing:
        where = f"{', '.join(missing)} in {root}"
        if not download:
            raise DataUnavailableError(
                f"{name} is not in {root}: put {', '.join(missing)} there, or point data_dir= (CLI: --data-dir) at "
                "the folder holding them"
            )
        _download(name, root, where)
    train_x, train_y, test_x, test_y = reader(root)
    images = torch.from_numpy(np.ascontiguousarray(train_x))
    labels = torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    train = ImageSet(images, labels)
    n_train = len(train) - n_valid
    if n_train <= 0:
        raise UsageError(f"{name} in {root} has {len(train)} training images, fewer than the {n_valid} validation rows")
    splits = {
        "train": train.subset(slice(0, n_train)),
        "valid": train.subset(slice(n_train, None)),
        "test": ImageSet(torch.from_numpy(np.ascontiguousarray(test_x)), torch.from_numpy(test_y)),
    }
    masks: dict[str, torch.Tensor | None] = dict.fromkeys(splits)
    if columns == "x,y,labelled":
        masks = {s: evaluation_mask(len(part)) for s, part in splits.items()}
        masks["train"] = labelled_mask(splits["train"].labels, labelled, split_seed)
    elif labelled is not None:
        raise UsageError("labelled= applies to columns='x,y,labelled'")
    splits = {s: part.with_columns(columns, masks[s]) for s, part in splits.items()}
    return Dataset(
        name + ("" if columns == "x" else f"[{columns}]"),
        splits["train"],
        splits["valid"],
        splits["test"],
        image_shape=splits["train"].image_shape,
        binary=False,
        labels={s: part.labels for s, part in splits.items()},
        classes=10,
    )


def evaluation_mask(rows: int) -> torch.Tensor:
    """The ``labelled`` column of a semi-supervised set's validation and test splits: every row unlabelled.

    A semi-supervised model is judged on images alone: its test ELBO is the bound on log p(x) with the label summed
    out, as it is on the unlabelled training rows. Rows marked labelled would be scored as log p(x, y) plus whatever
    the model adds on labelled rows only (a ``SemiSupervisedVAE``'s α·log q(y | x), 64 nats and more a row on MNIST),
    which is a training objective, not a likelihood. The labels stay in ``y``: accuracy judges read them there.
    """
    return torch.zeros(rows, dtype=torch.bool)


def labelled_mask(labels: torch.Tensor, labelled: float | int | None, seed: int) -> torch.Tensor:
    """The labelled rows: all (``None`` or 1.0), a fraction of them, or a number per class, balanced over classes."""

    classes = int(labels.max()) + 1
    if labelled is None or (isinstance(labelled, float) and labelled == 1.0):
        return torch.ones(len(labels), dtype=torch.bool)
    if isinstance(labelled, float) and 0 < labelled < 1:
        per_class = max(1, round(labelled * len(labels) / classes))
    elif isinstance(labelled, int) and not isinstance(labelled, bool) and labelled > 0:
        per_class = labelled
    else:
        raise UsageError(f"labelled must be a fraction in (0, 1] or a positive count per class, got {labelled!r}")
    return labelled_subset(labels, per_class, seed)

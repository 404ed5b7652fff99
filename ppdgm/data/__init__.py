"""Data: named data sets, image sets read from a data directory, and the streams a fit reads its minibatches from.

``ppdgm.data.load(name)`` is the front door (:mod:`ppdgm.data.named`); :class:`Dataset` is what every named set
is (:mod:`ppdgm.data.dataset`); :mod:`ppdgm.data.images` reads MNIST, Fashion-MNIST, SVHN and CIFAR-10 in
torchvision's layout; :mod:`ppdgm.data.streams` turns tensors, torch data sets and DataLoaders into seeded
minibatches (:mod:`~ppdgm.data.order`: the order of rows; :mod:`~ppdgm.data.transforms`: random transforms of a
batch; :mod:`~ppdgm.data.collate`: reading a torch data set's items).
"""

from ppdgm.data.dataset import SPLITS, Dataset, default_data_dir, labelled_subset
from ppdgm.data.images import DataUnavailableError
from ppdgm.data.named import (
    MNIST_URL,
    as_dataset,
    available_datasets,
    is_fraction,
    load,
    load_binarized_mnist,
    load_digits,
    load_mixture,
    mixture_centres,
    mixture_log_density,
    training_fraction,
    transformed,
    unpaired,
    with_columns,
)

__all__ = [
    "MNIST_URL", "SPLITS", "DataUnavailableError", "Dataset", "as_dataset", "available_datasets", "default_data_dir",
    "is_fraction", "labelled_subset", "load", "load_binarized_mnist", "load_digits", "load_mixture", "mixture_centres",
    "mixture_log_density", "training_fraction", "transformed", "unpaired", "with_columns",
]  # fmt: skip

"""The named image sets, read from small files written here in torchvision's layout (nothing is downloaded)."""

from __future__ import annotations

import gzip
import os
import pickle
import sys
import types
import urllib.error

import numpy as np
import pyro
import pytest
import torch

import ppdgm
from ppdgm.data.images import IMAGE_SETS, DataUnavailableError, ImageSet
from ppdgm.data.named import load
from ppdgm.zoo import build

ROWS = {"mnist": 10_030, "fashion-mnist": 10_030, "svhn": 5_030, "cifar10": 5_030}  # 30 training rows past valid
TEST_ROWS = 40


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(name: str, root, rng: np.random.Generator) -> dict:
    """Files of ``name`` with random pixels and labels; returns the arrays written (images N,C,H,W)."""
    n = ROWS[name]
    if name in ("mnist", "fashion-mnist"):
        folder = root / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
        folder.mkdir(parents=True)
        arrays = {}
        for prefix, rows in (("train", n), ("t10k", TEST_ROWS)):
            images, labels = rng.integers(0, 256, (rows, 28, 28)), rng.integers(0, 10, rows)
            (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))  # torchvision's .gz
            (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))
            arrays[prefix] = (images[:, None], labels)
        return arrays
    if name == "svhn":
        from scipy.io import savemat

        arrays = {}
        for split, rows in (("train", n), ("test", TEST_ROWS)):
            images, labels = rng.integers(0, 256, (rows, 3, 32, 32)).astype(np.uint8), rng.integers(0, 10, rows)
            savemat(
                root / f"{split}_32x32.mat",
                {"X": images.transpose(2, 3, 1, 0), "y": np.where(labels == 0, 10, labels)[:, None]},
            )
            arrays["train" if split == "train" else "t10k"] = (images, labels)
        return arrays
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8), rng.integers(0, 10, n)
    for i, part in enumerate(np.array_split(np.arange(n), 5)):
        batch = {"data": images[part].reshape(len(part), -1), "labels": labels[part].tolist()}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    test_images, test_labels = (
        rng.integers(0, 256, (TEST_ROWS, 3, 32, 32)).astype(np.uint8),
        rng.integers(0, 10, TEST_ROWS),
    )
    (folder / "test_batch").write_bytes(
        pickle.dumps({"data": test_images.reshape(TEST_ROWS, -1), "labels": test_labels.tolist()})
    )
    return {"train": (images, labels), "t10k": (test_images, test_labels)}


@pytest.mark.parametrize("name", list(IMAGE_SETS))
def test_each_named_set_reads_its_files_into_splits_of_rows_and_labels(name, tmp_path):
    written = _write(name, tmp_path, np.random.default_rng(0))
    data = load(name, tmp_path, download=False)
    n_valid = IMAGE_SETS[name][3]
    train_images, train_labels = written["train"]
    assert [len(data.train), len(data.valid), len(data.test)] == [ROWS[name] - n_valid, n_valid, TEST_ROWS]
    x = data.rows("train")
    channels, height, width = train_images.shape[1:]
    assert x.shape == (ROWS[name] - n_valid, channels * height * width) and x.dtype == torch.float32
    torch.testing.assert_close(x[5], torch.as_tensor(train_images[5].reshape(-1) / 255, dtype=torch.float32))
    assert torch.equal(data.labels["valid"], torch.as_tensor(train_labels[-n_valid:]))
    assert torch.equal(data.labels["test"], torch.as_tensor(written["t10k"][1]))
    assert data.image_shape == ((height, width) if channels == 1 else (channels, height, width))
    semi = load(name, tmp_path, columns="x,y,labelled", labelled=2)
    images, labels, mask = semi.rows("train").args
    assert torch.equal(labels.argmax(-1), data.labels["train"]) and images.shape == x.shape
    per_class = torch.bincount(data.labels["train"], minlength=10)
    assert torch.equal(torch.bincount(data.labels["train"][mask], minlength=10), per_class.clamp(max=2))
    for split in ("valid", "test"):  # judged on images alone; the labels stay in y for accuracy
        _, labels, mask = semi.rows(split).args
        assert not mask.any() and torch.equal(labels.argmax(-1), data.labels[split])


@pytest.mark.parametrize("name", list(IMAGE_SETS))
def test_a_missing_set_offline_says_which_files_to_put_where(name, tmp_path, monkeypatch):
    with pytest.raises(DataUnavailableError, match=r"put .* there, or point data_dir= \(CLI: --data-dir\)") as err:
        load(name, tmp_path, download=False)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)  # one line
    for path in IMAGE_SETS[name][1]:
        assert path in str(err.value)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # not installed
    with pytest.raises(DataUnavailableError, match="torchvision .which downloads it. is not installed"):
        load(name, tmp_path)
    offline = types.ModuleType("torchvision.datasets")

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("no network")

    for cls in ("MNIST", "FashionMNIST", "SVHN", "CIFAR10"):
        setattr(offline, cls, unreachable)
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", offline)
    with pytest.raises(DataUnavailableError, match="could not download .* no network.*Offline"):
        load(name, tmp_path)


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path):
    _write("cifar10", tmp_path, np.random.default_rng(0))

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Payload(), "labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="refusing posix.system"):
        load("cifar10", tmp_path, download=False)


def test_mnist_trains_through_the_dataset_path_with_dynamic_binarization(tmp_path):
    _write("mnist", tmp_path, np.random.default_rng(0))
    data = load("mnist", tmp_path, download=False)
    assert isinstance(data.train, ImageSet)
    pyro.clear_param_store()
    model, guide = build("vae-mlp", 784, hidden=(16,), z_dim=4)
    run = ppdgm.fit(model, guide, data, "vae", steps=3, batch_size=10, transform="binarize", progress=False)
    assert run.config["source"] == "dataset" and np.isfinite(run.history[-1]["train_elbo"])
    assert np.isfinite(run.history[-1]["valid_elbo"])

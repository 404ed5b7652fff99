import hashlib
import math
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import ppdgm
from ppdgm import data


def test_digits_splits_are_seeded_and_disjoint():
    a, b = data.load("digits"), data.load("digits")
    assert (a.train.shape, a.valid.shape, a.test.shape) == ((1300, 64), (200, 64), (297, 64))
    assert torch.equal(a.train, b.train) and a.train.min() >= 0 and a.train.max() <= 1
    other = data.load_digits(split_seed=1)
    assert not torch.equal(other.test, a.test)
    rows = {tuple(r.tolist()) for r in a.test}
    assert sum(tuple(r.tolist()) in rows for r in a.train) < 5  # (digits has a few duplicate images)
    binary = data.load("digits-binary")
    assert binary.binary and set(binary.train.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(binary.train, (a.train > 0.5).float())


def test_binarized_mnist_from_the_bit_packed_file(shared_data_dir):
    readme_sha = "50de2c8299a5a297789293ab2c30f6fc3cb8c359a15e5e88d5501aa18ebb8fa5"
    assert hashlib.sha256((shared_data_dir / "binarized_mnist.npz").read_bytes()).hexdigest() == readme_sha
    mnist = data.load("binarized-mnist", data_dir=shared_data_dir)
    assert (mnist.train.shape, mnist.valid.shape, mnist.test.shape) == ((50000, 784), (10000, 784), (10000, 784))
    assert mnist.train.mean().item() == pytest.approx(0.130562, abs=1e-6)
    assert mnist.valid.mean().item() == pytest.approx(0.131127, abs=1e-6)
    assert mnist.test.mean().item() == pytest.approx(0.132512, abs=1e-6)


def test_binarized_mnist_from_amat_text_files(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {s: (rng.random((n, 784)) < 0.2).astype(int) for s, n in (("train", 5), ("valid", 3), ("test", 2))}
    for split, arr in arrays.items():
        np.savetxt(tmp_path / f"binarized_mnist_{split}.amat", arr, fmt="%d")
    mnist = data.load_binarized_mnist(tmp_path)
    assert torch.equal(mnist.test, torch.as_tensor(arrays["test"], dtype=torch.float32))
    assert mnist.train.shape == (5, 784)


def test_binarized_mnist_offline_gives_a_clear_error_and_leaves_no_partial_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(data.DataUnavailableError, match=r"Offline\? Put binarized_mnist.npz"):
        data.load("binarized-mnist", data_dir=tmp_path)
    assert not list(tmp_path.iterdir())
    with pytest.raises(data.DataUnavailableError, match="is not in"):
        data.load_binarized_mnist(tmp_path, download=False)


@pytest.mark.parametrize(("name", "components"), [("ring8", 8), ("grid25", 25)])
def test_mixture_density_is_normalised_and_samples_cover_every_mode(name, components):
    ds = data.load(name)
    centres, std = data.mixture_centres(name)
    assert len(centres) == components
    nearest = torch.cdist(ds.train, centres).argmin(-1)
    counts = torch.bincount(nearest, minlength=components)
    assert counts.min() > 0.5 * len(ds.train) / components
    # integrate the density on a fine grid around each component (the rest has negligible mass)
    h = std / 20
    offsets = torch.arange(-8 * std, 8 * std, h) + h / 2
    grid = torch.cartesian_prod(offsets, offsets)
    mass = sum(ds.log_density((grid + c).double()).exp().sum().item() * h * h for c in centres.double())
    assert mass == pytest.approx(1.0, abs=1e-3)
    assert math.isfinite(ds.log_density(ds.test).mean().item())


def test_tensor_data_and_bad_data_types():
    ds = data.as_dataset(torch.ones(10, 3))
    assert ds.train.shape == (10, 3) and ds.valid.shape[0] == 0
    assert data.as_dataset(torch.ones(10, dtype=torch.float64)).train.dtype == torch.float64  # scalar rows, as given
    with pytest.raises(ValueError, match="one datapoint per row"):
        data.as_dataset(torch.tensor(1.0))
    with pytest.raises(TypeError, match="data must be a data set name"):
        data.as_dataset([1, 2, 3])


@pytest.mark.parametrize("columns", ["x", "x,y"])
def test_a_training_fraction_is_a_seeded_class_balanced_subset_of_the_training_rows(columns):
    """The paper's 1% / 10% rows: every load gives the same rows (whatever the method or seed), each class keeps the
    same number of rows, the rows are training rows, and validation and test are the whole splits."""
    full = ppdgm.data.load("digits", columns=columns)
    part = ppdgm.data.load("digits", columns=columns, fraction=0.1)
    again = ppdgm.data.load("digits", columns=columns, fraction=0.1)

    def first(rows):
        return rows if columns == "x" else rows.get(0)

    x_full, x_part = first(full.train), first(part.train)
    assert len(x_part) == 130 and torch.equal(x_part, first(again.train))
    assert torch.equal(torch.bincount(part.labels["train"]), torch.full((10,), 13))
    rows = {tuple(r.tolist()): i for i, r in enumerate(x_full)}
    index = torch.tensor([rows[tuple(r.tolist())] for r in x_part])
    assert torch.equal(full.labels["train"][index], part.labels["train"])  # the labels travel with their rows
    assert torch.equal(first(part.test), first(full.test))
    assert part.name == f"{full.name} (10% of the training rows)"


def test_a_comparison_spec_takes_a_training_fraction_and_refuses_a_bad_one(tmp_path):
    from ppdgm.compare import SpecError, parse_spec

    raw = {
        "name": "f",
        "data": {"name": "digits", "fraction": 0.01},
        "model": {"preset": "vae-mlp"},
        "budget": {"steps": 2},
        "methods": [{"name": "vae"}],
    }
    assert parse_spec(raw, output=tmp_path).data_options == {"fraction": 0.01}
    for bad in (0, 1.5, "ten", True):
        with pytest.raises(SpecError, match=r"data.fraction: a fraction of the training rows in \(0, 1\]"):
            parse_spec({**raw, "data": {"name": "digits", "fraction": bad}}, output=tmp_path)
    with pytest.raises(ppdgm.PpdgmError, match="fraction must be a share of the training rows"):
        ppdgm.data.load("digits", fraction=2.0)

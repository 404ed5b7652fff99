import os
from pathlib import Path

import pyro
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def private_data_folder(tmp_path_factory):
    """ppdgm's default data folder (downloads, cached judges) is the session's own: tests leave the user's alone."""
    os.environ["PPDGM_DATA"] = str(tmp_path_factory.mktemp("ppdgm-data"))


@pytest.fixture(autouse=True)
def fresh_state():
    """Every test starts from an empty param store, seed 0 and float32 defaults."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield


@pytest.fixture
def shared_data_dir() -> Path:
    if not (SHARED_DATA / "binarized_mnist.npz").exists():
        pytest.skip(f"binarized MNIST test copy not found at {SHARED_DATA}")
    return SHARED_DATA

"""Binarized MNIST with the Burda et al. (2016) one-layer architecture (slow: `make test-slow`)."""

import pytest

import ppdgm
from ppdgm.zoo import build


@pytest.mark.slow
@pytest.mark.parametrize(("method", "options"), [("vae", {}), ("iwae", {"num_particles": 5})])
def test_iwae_1layer_learns_binarized_mnist(shared_data_dir, method, options):
    data = ppdgm.data.load("binarized-mnist", data_dir=shared_data_dir)
    test = data.test[:1000]
    model, guide = build("iwae-1layer", data.dim)
    untrained = ppdgm.evaluate.log_likelihood(model, guide, test, num_samples=500)
    run = ppdgm.fit(model, guide, data, method, epochs=3, progress=False, seed=0, **options)
    key = f"valid_{run.method.objective_name}"
    assert run.history[-1][key] > run.history[0][key]
    trained = ppdgm.evaluate.log_likelihood(model, guide, test, num_samples=500)
    print(f"\n{method}: test log-likelihood {untrained} untrained -> {trained} after 3 epochs")
    assert trained.mean > untrained.mean + 300
    assert (
        trained.mean > -150
    )  # measured: -141.6 (vae), -135.2 (iwae k=5); Burda et al. report about -85 after 3,280 epochs

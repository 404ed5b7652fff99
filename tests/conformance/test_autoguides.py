"""Pyro's AutoGuides: every guide site is scored (their auxiliary sites included), as Pyro's ELBOs score them."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoIAFNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

import ppdgm

from .harness import assert_same_objective

AUTOGUIDES = [
    AutoNormal,
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoIAFNormal,
    AutoDelta,
]


def conjugate_model(x):
    """mu ~ N(0, 1), x_i ~ N(mu, 1): the posterior of mu given n rows is N(sum(x) / (n + 1), 1 / (n + 1))."""
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def constrained_model(x):
    """A positive and a real global beside per-row latents: transforms with Jacobians in the guide's density."""
    scale = pyro.sample("scale", dist.LogNormal(x.new_zeros(()), 1.0))
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0).to_event(1))
        pyro.sample("obs", dist.Normal(z, scale.unsqueeze(-1)).to_event(1), obs=x)


def _rows(n=7, dim=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (n,) if dim is None else (n, dim)
    return torch.randn(shape, generator=g, dtype=torch.float64) + 1.0


def _guide(cls, model):
    if cls is AutoIAFNormal:
        return cls(model, hidden_dim=[16])
    return cls(model)


@pytest.mark.parametrize("cls", AUTOGUIDES, ids=lambda c: c.__name__)
def test_autoguide_objective_equals_trace_elbo(float64, cls):
    x = _rows(5, 2)
    guide = _guide(cls, constrained_model)
    programs = assert_same_objective(constrained_model, guide, x)
    if cls is not AutoDelta:  # AutoDelta has no auxiliary site: its ELBO is log p(x, z) at the point
        assert programs.structure.auxiliary_sites


@pytest.mark.parametrize("cls", [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal], ids=lambda c: c.__name__)
def test_autoguide_iwae_equals_renyi_alpha_zero(float64, cls):
    x = _rows(1, 2)
    assert_same_objective(constrained_model, _guide(cls, constrained_model), x, method="iwae", num_particles=6)


@pytest.mark.parametrize(
    "cls",
    [AutoNormal, AutoDiagonalNormal, AutoLowRankMultivariateNormal, AutoMultivariateNormal],
    ids=lambda c: c.__name__,
)
def test_autoguide_recovers_the_exact_posterior_sd(cls):
    """On seven rows the exact posterior sd of mu is 1/sqrt(8) = 0.354; Pyro's SVI gets it within a few percent."""
    x = _rows(7).float()
    guide = cls(conjugate_model)
    run = ppdgm.fit(conjugate_model, guide, x, "vae", steps=1500, batch_size=7, lr=2e-2, progress=False, seed=0)
    with run.params(), torch.no_grad():
        draws = torch.stack([guide()["mu"] for _ in range(4000)])
    exact_sd, exact_mean = 1 / math.sqrt(8), x.sum().item() / 8
    assert abs(draws.std().item() - exact_sd) < 0.1 * exact_sd, draws.std().item()
    assert abs(draws.mean().item() - exact_mean) < 0.1, (draws.mean().item(), exact_mean)


def local_model(x):
    """z_i ~ N(0, 1), x_i ~ N(z_i, 1): p(x_i) = N(0, 2) and q(z_i) = N(x_i / 2, 1 / 2) is the exact posterior."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
        pyro.sample("obs", dist.Normal(z, 1.0), obs=x)


def test_log_likelihood_with_an_autoguide_at_the_exact_posterior_is_exact(float64):
    """With AutoNormal set to the exact posterior, every importance weight equals p(x_i): the estimate is exact."""
    x = _rows(7)
    guide = AutoNormal(local_model)
    guide(x)
    store = pyro.get_param_store()
    with torch.no_grad():
        store["AutoNormal.locs.z"].copy_(x / 2)
        store["AutoNormal.scales.z"] = torch.full_like(x, math.sqrt(0.5))
    estimate = ppdgm.evaluate.log_likelihood(local_model, guide, x, num_samples=20, batch_size=7)
    exact = dist.Normal(0.0, math.sqrt(2.0)).log_prob(x)
    assert torch.allclose(estimate.values, exact, atol=1e-8), (estimate.values, exact)


def test_log_likelihood_refuses_a_global_latent_naming_it(float64):
    x = _rows(7)
    with pytest.raises(ppdgm.PpdgmError, match=r"global site\(s\) \['mu', 'mu_unconstrained'\]"):
        ppdgm.evaluate.log_likelihood(conjugate_model, AutoNormal(conjugate_model), x, num_samples=5)


def test_iwae_with_a_global_latent_equals_renyi_on_the_whole_batch(float64):
    """A global latent's weight belongs to the batch: ppdgm's bound then equals Pyro's RenyiELBO at any batch size."""
    assert_same_objective(conjugate_model, AutoNormal(conjugate_model), _rows(6), method="iwae", num_particles=5)


@pytest.mark.parametrize("method", ["rws", "ws"])
def test_methods_that_need_q_of_the_latents_alone_refuse_auxiliary_sites(method):
    x = _rows(6).float()
    with pytest.raises(ppdgm.PpdgmError, match=r"auxiliary site\(s\) \['mu_unconstrained'\]"):
        ppdgm.fit(conjugate_model, AutoNormal(conjugate_model), x, method, steps=1, progress=False)

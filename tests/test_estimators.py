"""Exact-answer tests of the estimators on a linear-Gaussian model (log p(x) and p(z | x) known)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppdgm import evaluate
from ppdgm.errors import UsageError
from ppdgm.inference import IWAE, VAE

from .helpers import inspected, linear_gaussian, poor_guide


def test_elbo_with_exact_posterior_equals_log_marginal(float64):
    model, guide, x = linear_gaussian()
    exact = model.log_marginal(x).detach()
    elbo = evaluate.elbo(model, guide, x, num_samples=3).values
    assert torch.allclose(elbo, exact, atol=1e-5, rtol=0)
    iwae = evaluate.iwae_bound(model, guide, x, k=7).values
    assert torch.allclose(iwae, exact, atol=1e-5, rtol=0)


def test_importance_sampled_log_likelihood_is_exact_with_exact_posterior_even_when_chunked(float64):
    model, guide, x = linear_gaussian()
    exact = evaluate.exact_log_likelihood(model, x)
    # max_elements forces particle chunks of 2 samples: the running log-sum-exp must combine them exactly
    estimate = evaluate.log_likelihood(model, guide, x, num_samples=9, batch_size=16, max_elements=2 * 16 * 4)
    assert torch.allclose(estimate.values, exact.values, atol=1e-5, rtol=0)
    assert estimate.stderr == pytest.approx(exact.stderr)


def test_bounds_are_ordered_with_a_poorer_guide(float64):
    model, _, x = linear_gaussian(n=400)
    guide = poor_guide(model, 4, 2)
    exact = model.log_marginal(x).detach()
    elbo = evaluate.elbo(model, guide, x, num_samples=20)
    iwae5 = evaluate.iwae_bound(model, guide, x, k=5, num_repeats=20)
    iwae50 = evaluate.iwae_bound(model, guide, x, k=50, num_repeats=20)
    # paired differences per datapoint, compared with their own standard errors
    for lower, upper in ((elbo.values, iwae5.values), (iwae5.values, iwae50.values), (iwae50.values, exact)):
        diff = upper - lower
        assert diff.mean() > 5 * diff.std() / math.sqrt(len(diff)), (diff.mean(), diff.std())
    assert elbo.mean < iwae5.mean < iwae50.mean < exact.mean().item()


@pytest.mark.parametrize("num_particles", [4, 10])
def test_iwae_model_gradient_is_per_datapoint_log_mean_exp(float64, num_particles):
    model, _, x = linear_gaussian(n=5)
    guide = poor_guide(model, 4, 2)
    programs = inspected(model, guide, x)
    loss, side, _ = IWAE(num_particles=num_particles).loss(programs, x)
    theta = [model.weight, model.bias]
    grads = torch.autograd.grad(loss, theta)

    # the same sampled latents, scored by hand
    z = side.guide_trace.nodes["z"]["value"].detach()  # (K, B, z_dim)
    assert z.shape == (num_particles, 5, 2)
    w, b, s = model.weight, model.bias, model.noise_scale
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_lik = torch.distributions.Normal(z @ w.T + b, s).log_prob(x).sum(-1)
    log_q = side.log_q.detach()
    log_w = log_prior + log_lik - log_q  # (K, B)
    hand = -(torch.logsumexp(log_w, 0) - math.log(num_particles)).mean()  # normalised within each datapoint
    expected = torch.autograd.grad(hand, theta, retain_graph=True)
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-10, rtol=1e-8)

    # weights normalised across the whole minibatch would give a different gradient: the test can tell
    mixed = -(torch.logsumexp(log_w.reshape(-1), 0) - math.log(log_w.numel()))
    wrong = torch.autograd.grad(mixed, theta)
    assert not torch.allclose(wrong[0], expected[0], atol=1e-6)


def _guide_gradients(model, guide, x, method, repeats):
    programs = inspected(model, guide, x)
    params = list(guide.parameters())
    rows = []
    for _ in range(repeats):
        loss, _, _ = method.loss(programs, x)
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def test_dreg_agrees_with_reparam_in_expectation_and_has_lower_variance(float64):
    model, _, x = linear_gaussian(n=3)
    guide = poor_guide(model, 4, 2, scale_factor=1.3, shift=0.2)
    repeats = 600
    reparam = _guide_gradients(model, guide, x, IWAE(50, "reparam"), repeats)
    dreg = _guide_gradients(model, guide, x, IWAE(50, "dreg"), repeats)
    se = (reparam.var(0) / repeats + dreg.var(0) / repeats).sqrt()
    z_scores = (reparam.mean(0) - dreg.mean(0)) / se
    assert z_scores.abs().max() < 4.5, z_scores
    # the means are not trivially equal (the gradient is far from zero somewhere)
    assert (dreg.mean(0).abs() / (dreg.var(0) / repeats).sqrt()).max() > 10
    ratio = dreg.var(0).sum() / reparam.var(0).sum()
    assert ratio < 0.5, f"DReG variance / reparam variance = {ratio:.3f}"


def test_vae_gradient_matches_exact_elbo_gradient_for_reparameterised_latents(float64):
    model, _, x = linear_gaussian(n=3)
    guide = poor_guide(model, 4, 2)
    programs = inspected(model, guide, x)
    params = list(guide.parameters()) + [model.weight, model.bias]
    estimate = torch.autograd.grad(VAE(num_particles=40000).loss(programs, x)[0], params)

    # closed-form ELBO of the linear-Gaussian model under a diagonal Gaussian guide
    loc = guide.linear(x)
    scale = torch.nn.functional.softplus(guide.raw_scale)
    w, b, s = model.weight, model.bias, model.noise_scale
    resid = x - loc @ w.T - b
    expected_sq = resid.pow(2).sum(-1) + (w.pow(2) @ scale.pow(2)).sum()
    x_dim, z_dim = w.shape
    log_lik = -0.5 * expected_sq / s**2 - x_dim * torch.log(s) - 0.5 * x_dim * math.log(2 * math.pi)
    kl = 0.5 * (scale.pow(2).sum() + loc.pow(2).sum(-1) - z_dim - 2 * torch.log(scale).sum())
    exact = torch.autograd.grad(-(log_lik - kl).mean(), params)
    for got, want in zip(estimate, exact):
        assert torch.allclose(got, want, atol=0.05, rtol=0.05), (got, want)


def test_score_function_gradient_matches_enumerated_elbo_gradient(float64):
    """NVIL path for Bernoulli latents: the estimator's mean equals the exact ELBO gradient by enumeration."""
    import itertools

    import pyro.distributions as dist
    from torch import nn

    torch.manual_seed(3)
    dec = nn.Linear(3, 5).double()
    enc = nn.Linear(5, 3).double()

    def model(x=None, batch_size=None):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0] if x is not None else batch_size):
            z = pyro.sample("z", dist.Bernoulli(torch.full((3,), 0.4, dtype=torch.float64)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x=None, batch_size=None):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=enc(x)).to_event(1))

    x = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 1, 0, 1], [1, 1, 1, 0, 0]], dtype=torch.float64)
    programs = inspected(model, guide, x)
    assert programs.structure.nonreparam_sites == ("z",)
    params = list(dec.parameters()) + list(enc.parameters())
    estimate = torch.autograd.grad(VAE(num_particles=200000).loss(programs, x)[0], params)

    zs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)  # (8, 3)
    q = dist.Bernoulli(logits=enc(x)).to_event(1)
    log_q = q.log_prob(zs.unsqueeze(1))  # (8, B)
    log_p = dist.Bernoulli(torch.full((3,), 0.4, dtype=torch.float64)).to_event(1).log_prob(zs).unsqueeze(1)
    log_p = log_p + dist.Bernoulli(logits=dec(zs).unsqueeze(1)).to_event(1).log_prob(x)
    exact_elbo = (log_q.exp() * (log_p - log_q)).sum(0).mean()
    exact = torch.autograd.grad(-exact_elbo, params)
    for got, want in zip(estimate, exact):
        assert torch.allclose(got, want, atol=0.02, rtol=0.05), (got, want)


def _with_factor(model, log_factor: float):
    """The linear-Gaussian model with a ``pyro.factor`` of ``log_factor`` on every row."""

    def factored(x):
        pyro.module(model.name, model)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(model.prior_loc, 1.0).to_event(1))
            loc = z @ model.weight.T + model.bias
            pyro.sample("x", dist.Normal(loc, model.noise_scale).to_event(1), obs=x)
            pyro.factor("penalty", torch.full(x.shape[:1], log_factor, dtype=x.dtype))

    return factored


LIKELIHOODS = {
    "elbo": lambda model, guide, x: evaluate.elbo(model, guide, x),
    "iwae_bound": lambda model, guide, x: evaluate.iwae_bound(model, guide, x, k=3),
    "log_likelihood": lambda model, guide, x: evaluate.log_likelihood(model, guide, x, num_samples=3),
}


@pytest.mark.parametrize("metric", list(LIKELIHOODS))
def test_a_factor_that_adds_to_the_log_density_is_refused_and_a_zero_one_changes_nothing(float64, metric):
    model, guide, x = linear_gaussian(n=32)
    estimate = LIKELIHOODS[metric]
    with pytest.raises(UsageError, match=r"pyro.factor site 'penalty' adds to its log-density .*up to 2\.5 a row"):
        estimate(_with_factor(model, -2.5), guide, x)
    pyro.set_rng_seed(3)
    plain = estimate(model, guide, x).values
    pyro.set_rng_seed(3)
    assert torch.equal(estimate(_with_factor(model, 0.0), guide, x).values, plain)


@pytest.mark.parametrize("metric", list(LIKELIHOODS))
def test_the_factor_check_leaves_the_estimates_draws_as_they_were(float64, metric, monkeypatch):
    from ppdgm.evaluate import likelihood

    model, guide, x = linear_gaussian(n=32)
    pyro.set_rng_seed(3)
    checked = LIKELIHOODS[metric](model, guide, x).values
    monkeypatch.setattr(likelihood, "refuse_factors", lambda *args: None)
    pyro.set_rng_seed(3)
    assert torch.equal(LIKELIHOODS[metric](model, guide, x).values, checked)


def test_a_semi_supervised_vae_is_judged_on_its_test_rows_without_their_labels():
    """Test rows come unlabelled, so the test ELBO is M2's bound on log p(x) with y summed out: the classification
    term α·log q(y | x), which the model adds on labelled rows only, plays no part (same numbers as with α = 0)."""
    from ppdgm.data.named import load
    from ppdgm.models import SemiSupervisedVAE

    test = load("digits-binary", columns="x,y,labelled", labelled=3).rows("test")
    assert not test.get(2).any()
    pyro.set_rng_seed(0)
    m2 = SemiSupervisedVAE(64, 10, classification_weight=64.0)
    scores = []
    for weight in (64.0, 0.0):
        m2.classification_weight = weight
        pyro.set_rng_seed(1)
        scores.append(evaluate.elbo(m2.model, m2.guide, test).values)
    assert torch.equal(scores[0], scores[1])
    m2.classification_weight = 64.0
    labelled = test.replace({2: torch.ones_like(test.get(2))})
    with pytest.raises(UsageError, match="pyro.factor site 'classification' adds to its log-density"):
        evaluate.elbo(m2.model, m2.guide, labelled)

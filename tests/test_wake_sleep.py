"""Wake-sleep family on sigmoid belief nets, checked against exact (enumerated) answers."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import ppdgm
from ppdgm import evaluate
from ppdgm.evaluate.sampling import generate
from ppdgm.guides import SBNRecognition
from ppdgm.inference import RWS
from ppdgm.models import SigmoidBeliefNet
from ppdgm.programs.pair import ConventionError, ProgramPair

X_DIM, H_DIM = 10, 6


def teacher(seed=0):
    """A known 6-latent, 10-visible SBN with strong weights, and data drawn from it."""
    torch.manual_seed(seed)
    sbn = SigmoidBeliefNet(X_DIM, (H_DIM,), name="teacher")
    with torch.no_grad():
        sbn.generative[0].weight.normal_(0, 2.5)
        sbn.generative[0].bias.normal_(0, 1.0)
        sbn.top_logits.normal_(0, 1.0)
    x = generate(sbn, 1500, mean=False)
    return sbn, ppdgm.data.Dataset("teacher", x[:1000], x[1000:1200], x[1200:], None, True)


def user_sbn_pair():
    """A one-layer SBN and its recognition network, written in the test as a user would."""
    decoder = nn.Linear(H_DIM, X_DIM)
    encoder = nn.Sequential(nn.Linear(X_DIM, 32), nn.Tanh(), nn.Linear(32, H_DIM))
    prior_logits = nn.Parameter(torch.zeros(H_DIM))

    def model(x=None, batch_size=None):
        pyro.module("decoder", decoder)
        logits = pyro.param("prior_logits", prior_logits)
        with pyro.plate("data", x.shape[0] if x is not None else batch_size):
            h = pyro.sample("h", dist.Bernoulli(logits=logits).to_event(1))
            return pyro.sample("x", dist.Bernoulli(logits=decoder(h)).to_event(1), obs=x)

    def guide(x=None, batch_size=None):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("h", dist.Bernoulli(logits=encoder(x)).to_event(1))

    return model, guide


def log_joint_table(model: SigmoidBeliefNet, x):
    """log p(x, h) for all 64 configurations of a one-layer SBN, by hand: shape (64, B)."""
    h = torch.tensor(list(itertools.product([0.0, 1.0], repeat=H_DIM)))
    log_prior = dist.Bernoulli(logits=model.top_logits).log_prob(h).sum(-1)
    log_lik = dist.Bernoulli(logits=model.generative[0](h).unsqueeze(1)).log_prob(x).sum(-1)
    return h, log_prior.unsqueeze(1) + log_lik


def test_exact_log_likelihood_by_enumeration_matches_a_hand_sum_and_the_is_estimate():
    sbn, data = teacher()
    x = data.test[:20]
    _, table = log_joint_table(sbn, x)
    exact = evaluate.exact_log_likelihood(sbn, x)
    assert torch.allclose(exact.values, torch.logsumexp(table, 0).detach(), atol=1e-5)
    guide = SBNRecognition(X_DIM, (H_DIM,), hidden=(32,))
    ppdgm.fit(sbn, guide, data, "rws", epochs=5, progress=False, lr={"model": 0.0, "guide": 3e-3})
    estimate = evaluate.log_likelihood(sbn, guide, x, num_samples=20000)
    error = (estimate.values - exact.values).abs()
    assert error.mean() < 0.02 and error.max() < 0.1, error


def test_multi_layer_enumeration_and_its_limits():
    sbn = SigmoidBeliefNet(X_DIM, (4, 3, 2))
    x = generate(sbn, 4, mean=False)
    values = evaluate.exact_log_likelihood(sbn, x, max_elements=64).values  # chunks of a few configurations
    assert torch.allclose(values, evaluate.exact_log_likelihood(sbn, x).values, atol=1e-5)
    big = SigmoidBeliefNet(X_DIM, (30,))
    with pytest.raises(ValueError, match="30 binary latents make 2\\^30 configurations"):
        evaluate.exact_log_likelihood(big, x)


@pytest.mark.parametrize(
    ("method", "options"),
    [("ws", {}), ("rws", {"num_particles": 5}), ("vae", {}), ("iwae", {"num_particles": 5})],
)
def test_every_method_trains_a_user_written_discrete_pair_on_exact_likelihood(method, options):
    sbn, data = teacher()
    truth = evaluate.exact_log_likelihood(sbn, data.test).mean
    model, guide = user_sbn_pair()
    before = evaluate.exact_log_likelihood(model, data.test).mean
    ppdgm.fit(model, guide, data, method, epochs=40, lr=1e-2, progress=False, **options)
    after = evaluate.exact_log_likelihood(model, data.test).mean
    print(f"\n{method}: exact held-out log-likelihood {before:.3f} -> {after:.3f} (teacher {truth:.3f})")
    # clearly up: at least 60% of the gap between the untrained model and the teacher is closed
    assert after - before > 0.6 * (truth - before), (before, after, truth)


def test_rws_wake_gradients_use_weights_normalised_per_datapoint():
    sbn, data = teacher()
    guide = SBNRecognition(X_DIM, (H_DIM,), hidden=(16,))
    x = data.train[:4]
    assert len({tuple(r.tolist()) for r in x}) == 4  # distinct datapoints
    programs = ProgramPair(sbn, guide)
    programs.inspect(x)
    theta, phi = list(sbn.parameters()), list(guide.parameters())
    method = RWS(num_particles=7, sleep_fraction=0.0)
    torch.manual_seed(11)
    loss, _ = method.loss(programs, x)
    got = torch.autograd.grad(loss, theta + phi, allow_unused=True)

    torch.manual_seed(11)  # the same latents again, scored by hand
    h = programs.data_side(x, 7).guide_trace.nodes["h1"]["value"]  # (K, B, 6)
    log_p = dist.Bernoulli(logits=sbn.top_logits).log_prob(h).sum(-1)
    log_p = log_p + dist.Bernoulli(logits=sbn.generative[0](h)).log_prob(x).sum(-1)
    log_q = dist.Bernoulli(logits=guide.recognition[0](x)).log_prob(h).sum(-1)
    weights = torch.softmax((log_p - log_q).detach(), 0)  # over the 7 particles of each datapoint
    hand = -((weights * log_p).sum(0).mean() + (weights * log_q).sum(0).mean())
    want = torch.autograd.grad(hand, theta + phi, retain_graph=True)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-6)

    batch_weights = torch.softmax((log_p - log_q).detach().reshape(-1), 0).reshape(7, 4)  # across the batch
    wrong = torch.autograd.grad(-((batch_weights * log_p).sum() + (batch_weights * log_q).sum()), theta + phi)
    assert not all(torch.allclose(g, w, atol=1e-3) for g, w in zip(wrong, want))


def posterior_kl(model: SigmoidBeliefNet, guide: SBNRecognition, x) -> torch.Tensor:
    """Mean over x of KL(p(h | x) || q(h | x)), and of the same KL for the best factorised q per x."""
    with torch.no_grad():
        h, table = log_joint_table(model, x)
        log_post = table - torch.logsumexp(table, 0)  # (64, B)
        post = log_post.exp()
        log_q = dist.Bernoulli(logits=guide.recognition[0](x)).log_prob(h.unsqueeze(1)).sum(-1)
        kl = (post * (log_post - log_q)).sum(0)
        marginals = (post.unsqueeze(-1) * h.unsqueeze(1)).sum(0).clamp(1e-6, 1 - 1e-6)  # (B, 6)
        log_best = dist.Bernoulli(probs=marginals).log_prob(h.unsqueeze(1)).sum(-1)
        best = (post * (log_post - log_best)).sum(0)
    return kl.mean(), best.mean()


def test_sleep_phase_alone_drives_the_guide_to_the_exact_posterior():
    sbn, data = teacher()
    guide = SBNRecognition(X_DIM, (H_DIM,), hidden=(64,))
    before, floor = posterior_kl(sbn, guide, data.test)
    model_before = [p.detach().clone() for p in sbn.parameters()]
    ppdgm.fit(sbn, guide, data, "ws", epochs=60, progress=False, lr={"model": 0.0, "guide": 3e-3})
    assert all(torch.equal(a, b) for a, b in zip(model_before, sbn.parameters()))  # the model stayed fixed
    after, _ = posterior_kl(sbn, guide, data.test)
    print(f"\nKL(p(h|x) || q(h|x)): {before:.3f} -> {after:.3f}; best factorised q: {floor:.3f}")
    # floor: the best factorised q for each x (its marginals), which no amortised guide can beat
    assert after < floor + 0.1 and after < 0.2 * before, (before, after, floor)


def test_sleep_phase_refuses_a_latent_it_cannot_score():
    dec = nn.Linear(H_DIM, X_DIM)

    def model(x=None, batch_size=None):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0] if x is not None else batch_size):
            size = H_DIM if x is not None else H_DIM - 1  # a bug that only shows when dreaming
            h = pyro.sample("h1", dist.Bernoulli(0.5 * torch.ones(size)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(nn.functional.pad(h, (0, H_DIM - size)))).to_event(1), obs=x)

    guide = SBNRecognition(X_DIM, (H_DIM,))
    _, data = teacher()
    with pytest.raises(ConventionError, match=r"cannot score latent site 'h1'.*\(3, 5\).*\(3, 6\)"):
        ppdgm.fit(model, guide, data, "ws", steps=1, progress=False)


def test_guide_missing_an_upper_layer_is_named():
    sbn = SigmoidBeliefNet(X_DIM, (4, 3))
    guide = SBNRecognition(X_DIM, (4,))
    _, data = teacher()
    with pytest.raises(ConventionError, match=r"latent site\(s\) \['h2'\]"):
        ppdgm.fit(sbn, guide, data, "rws", steps=1, progress=False)


def test_rws_options_are_checked():
    with pytest.raises(ValueError, match="sleep_fraction must be in"):
        RWS(sleep_fraction=1.5)


@pytest.mark.parametrize("method", ["ws", "rws"])
def test_three_layer_sbn_trains_in_every_phase(method):
    _, data = teacher()
    model = SigmoidBeliefNet(X_DIM, (4, 3, 2))
    guide = SBNRecognition(X_DIM, (4, 3, 2), hidden=(16,))
    assert ProgramPair(model, guide).inspect(data.train[:5]).latent_sites == ("h3", "h2", "h1")
    before = evaluate.exact_log_likelihood(model, data.test).mean
    ppdgm.fit(model, guide, data, method, epochs=20, lr=1e-2, progress=False)
    after = evaluate.exact_log_likelihood(model, data.test).mean
    print(f"\n{method}: 3-layer exact log-likelihood {before:.3f} -> {after:.3f}")
    assert after > before + 0.8, (before, after)


def test_rws_scores_reparameterisable_latents_at_fixed_values(float64):
    """With a Gaussian guide, RWS's gradients hold the sampled z fixed (no pathwise term)."""
    from .helpers import linear_gaussian, poor_guide

    model, _, x = linear_gaussian(n=3)
    guide = poor_guide(model, 4, 2)
    programs = ProgramPair(model, guide)
    programs.inspect(x)
    params = [model.weight, model.bias, *guide.parameters()]
    torch.manual_seed(5)
    loss, _ = RWS(num_particles=4, sleep_fraction=0.0).loss(programs, x)
    got = torch.autograd.grad(loss, params)

    torch.manual_seed(5)
    z = programs.data_side(x, 4).guide_trace.nodes["z"]["value"].detach()  # the same draws, held fixed
    log_p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_p = log_p + dist.Normal(z @ model.weight.T + model.bias, model.noise_scale).log_prob(x).sum(-1)
    log_q = dist.Normal(guide.linear(x), nn.functional.softplus(guide.raw_scale)).log_prob(z).sum(-1)
    weights = torch.softmax((log_p - log_q).detach(), 0)
    want = torch.autograd.grad(-((weights * log_p).sum(0).mean() + (weights * log_q).sum(0).mean()), params)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-10)

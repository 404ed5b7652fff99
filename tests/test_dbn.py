"""Deep belief nets: greedy RBM stacking, the directed part as a Pyro model, wake-sleep fine-tuning."""

import itertools

import pyro.poutine as poutine
import torch

import ppdgm
from ppdgm.models import DBN


def _pretrained(sizes=(64, 10, 6), epochs=10):
    torch.manual_seed(0)
    dbn = DBN(sizes, sample_steps=50)
    dbn.pretrain("digits-binary", epochs=epochs, lr=0.02)
    dbn.normalise_top()
    return dbn


def test_pyro_model_log_joint_equals_the_rbm_code():
    dbn = _pretrained()
    x = ppdgm.data.load("digits-binary").test[:32]
    guide_trace = poutine.trace(dbn.guide).get_trace(x)
    hidden = [guide_trace.nodes[f"h{i}"]["value"] for i in (1,)]
    model_trace = poutine.trace(poutine.replay(dbn.model, trace=guide_trace)).get_trace(x)
    by_pyro = sum(site["fn"].log_prob(site["value"]) for site in model_trace.nodes.values() if site["type"] == "sample")
    assert torch.allclose(by_pyro, dbn.log_joint(x, hidden), atol=1e-4)


def test_dbn_likelihood_by_enumeration_bounds_the_importance_estimate():
    dbn = _pretrained()
    x = ppdgm.data.load("digits-binary").test
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=10)))
    with torch.no_grad():
        joint = torch.stack([dbn.log_joint(x, [h.expand(x.shape[0], 10)]) for h in configs])
    exact = torch.logsumexp(joint, 0).mean().item()
    estimate = ppdgm.evaluate.log_likelihood(dbn.model, dbn.guide, x, num_samples=2000)
    assert estimate.mean <= exact + 0.05 and estimate.mean > exact - 1.0, (estimate, exact)
    untrained = DBN((64, 10, 6))
    untrained.normalise_top()
    assert ppdgm.evaluate.log_likelihood(untrained.model, untrained.guide, x, num_samples=200).mean < exact - 10


def test_wake_sleep_fine_tunes_the_directed_layers_and_samples_are_drawn():
    dbn = _pretrained(sizes=(64, 24, 8), epochs=10)
    data = ppdgm.data.load("digits-binary")
    top_before = dbn.top.weight.detach().clone()
    torch.manual_seed(1)
    before = ppdgm.evaluate.log_likelihood(dbn.model, dbn.guide, data.test, num_samples=300).mean
    ppdgm.fit(dbn.model, dbn.guide, data, "ws", epochs=15, lr=1e-3, progress=False)
    torch.manual_seed(1)
    after = ppdgm.evaluate.log_likelihood(dbn.model, dbn.guide, data.test, num_samples=300).mean
    assert after > before, (before, after)
    assert torch.equal(dbn.top.weight, top_before)  # the top RBM is not a player of the directed model
    assert ppdgm.evaluate.sampling.generate(dbn.model, 8, mean=False).shape == (8, 64)

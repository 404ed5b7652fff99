"""PixelCNN and maximum likelihood: causal masks, the exact likelihood, normalisation and sampling."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.nn import functional as F

import ppdgm
from ppdgm.inference import MLE
from ppdgm.models import PixelCNN
from ppdgm.programs.pair import ConventionError, ProgramPair


def test_masks_make_each_logit_depend_only_on_earlier_pixels():
    model = PixelCNN((6, 6), channels=8, layers=3, kernel_size=3)
    x = torch.rand(1, 1, 6, 6, requires_grad=True)
    logits = model.net(x).reshape(-1)
    for i in range(36):
        (grad,) = torch.autograd.grad(logits[i], x, retain_graph=True)
        grad = grad.reshape(-1)
        assert torch.all(grad[i:] == 0), f"logit {i} sees pixels {torch.nonzero(grad[i:]).flatten() + i}"
        if i > 0:
            assert grad[i - 1] != 0 or grad[max(0, i - 6)] != 0  # it does see its neighbours before it


def test_log_likelihood_is_the_sum_of_pixel_conditionals():
    data = ppdgm.data.load("digits-binary").test[:20]
    model = PixelCNN((8, 8), channels=8, layers=2, kernel_size=3)
    logits = model.net(data.reshape(-1, 1, 8, 8)).reshape(20, 64)
    by_hand = (data * F.logsigmoid(logits) + (1 - data) * F.logsigmoid(-logits)).sum(-1)
    exact = ppdgm.evaluate.exact_log_likelihood(model, data)
    assert torch.allclose(exact.values, by_hand.detach(), atol=1e-4)
    programs = ProgramPair(model, None)
    programs.inspect(data)
    assert torch.allclose(MLE().log_likelihood(programs, data).detach(), by_hand.detach(), atol=1e-4)


def test_tiny_pixelcnn_is_normalised_and_sampling_matches_it(float64):
    model = PixelCNN((2, 2), channels=4, layers=2, kernel_size=3).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)
    probs = ppdgm.evaluate.exact_log_likelihood(model, configs).values.exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-12)
    samples = ppdgm.evaluate.sampling.generate(model, 20000, mean=False)
    index = (samples * torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=torch.float64)).sum(-1).long()
    freq = torch.bincount(index, minlength=16).double() / 20000
    tolerance = 5 * (probs * (1 - probs) / 20000).sqrt() + 1e-3
    assert torch.all((freq - probs).abs() < tolerance), (freq, probs)


def test_mle_trains_pixelcnn_and_raises_the_exact_likelihood():
    data = ppdgm.data.load("digits-binary")
    model = PixelCNN((8, 8), channels=16, layers=3, kernel_size=3)
    before = ppdgm.evaluate.exact_log_likelihood(model, data.test).mean
    run = ppdgm.fit(model, None, data, "mle", epochs=3, lr=3e-3, progress=False)
    after = ppdgm.evaluate.exact_log_likelihood(model, data.test).mean
    assert after > before + 10 and run.history[-1]["valid_log_likelihood"] > before + 10, (before, after)


def test_mle_refuses_latent_variable_models_and_vae_refuses_no_guide():
    data = ppdgm.data.load("digits-binary")
    latent_model = ppdgm.models.BernoulliMLPModel(64, 4, (16,))
    with pytest.raises(ConventionError, match="fully observed model.*'z'"):
        ppdgm.fit(latent_model, None, data, "mle", steps=1, progress=False)
    with pytest.raises(ValueError, match="method 'vae' needs a guide"):
        ppdgm.fit(PixelCNN((8, 8)), None, data, "vae", steps=1, progress=False)


def test_user_written_fully_observed_model_trains_by_mle():
    logits = torch.zeros(64, requires_grad=True)

    def model(x=None, batch_size=None):
        p = pyro.param("pixel_logits", logits)
        n = x.shape[0] if x is not None else batch_size
        with pyro.plate("data", n):
            pyro.sample("x", dist.Bernoulli(logits=p).to_event(1), obs=x)

    data = ppdgm.data.load("digits-binary")
    ppdgm.fit(model, None, data, "mle", steps=400, batch_size=data.train.shape[0], lr=0.05, progress=False)
    mean = data.train.mean(0)  # the maximum-likelihood independent-pixel model is the pixel mean
    assert torch.allclose(torch.sigmoid(pyro.param("pixel_logits")).detach(), mean, atol=0.02)

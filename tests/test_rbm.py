"""RBMs: exact partition function, AIS against it, and CD/PCD raising the exact held-out likelihood."""

import itertools

import pytest
import torch

import ppdgm
from ppdgm.guides import GaussianMLPEncoder
from ppdgm.models import RBM
from ppdgm.programs.pair import ConventionError


def _random_rbm(n_visible, n_hidden, seed, scale=1.0):
    rbm = RBM(n_visible, n_hidden).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rbm.weight.copy_(scale * torch.randn(n_visible, n_hidden, generator=gen, dtype=torch.float64))
        rbm.visible_bias.copy_(0.5 * torch.randn(n_visible, generator=gen, dtype=torch.float64))
        rbm.hidden_bias.copy_(0.5 * torch.randn(n_hidden, generator=gen, dtype=torch.float64))
    return rbm


def _all_visible(n):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


@pytest.mark.parametrize(("n_visible", "n_hidden"), [(8, 4), (4, 8)])
def test_log_partition_matches_brute_force_over_both_layers(n_visible, n_hidden):
    rbm = _random_rbm(n_visible, n_hidden, seed=0)
    v, h = _all_visible(n_visible), _all_visible(n_hidden)
    energy = -(v @ rbm.visible_bias).unsqueeze(1) - (h @ rbm.hidden_bias).unsqueeze(0) - v @ rbm.weight @ h.T
    brute = torch.logsumexp((-energy).flatten(), 0)
    assert torch.allclose(rbm.log_partition(), brute, atol=1e-10)
    assert torch.allclose(rbm.log_marginal(v).exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ais_matches_enumeration_within_its_error(seed):
    rbm = _random_rbm(12, 8, seed=seed)
    exact = rbm.log_partition().item()
    estimate, stderr = rbm.ais_log_partition(200, 1000, generator=torch.Generator().manual_seed(seed))
    assert abs(estimate - exact) < 4 * stderr + 0.02, (estimate, exact, stderr)
    assert stderr < 0.05


def _teacher_data(n, seed=0):
    teacher = _random_rbm(8, 4, seed=10, scale=2.0)
    v = _all_visible(8)
    probs = teacher.log_marginal(v).exp().detach()
    idx = torch.multinomial(probs, n, replacement=True, generator=torch.Generator().manual_seed(seed))
    return teacher, v[idx].float()


@pytest.mark.parametrize("method", ["cd", "pcd"])
def test_contrastive_divergence_raises_exact_held_out_likelihood(method):
    teacher, train = _teacher_data(4000, seed=0)
    _, held_out = _teacher_data(1000, seed=1)
    student = RBM(8, 4, seed=3)
    before = student.log_marginal(held_out).mean().item()
    ppdgm.fit(student, None, train, method, epochs=30, batch_size=100, lr=0.05, progress=False)
    after = student.log_marginal(held_out).mean().item()
    best = teacher.log_marginal(held_out.double()).mean().item()
    # measured: -5.53 nats untrained -> cd -2.268, pcd -2.261; the teacher itself scores -2.248
    assert after > before + 2.0 and after > best - 0.1, (before, after, best)


def test_cd_refuses_a_model_without_an_energy():
    model = ppdgm.models.BernoulliMLPModel(64, 4, (16,))
    with pytest.raises(ConventionError, match="energy models"):
        ppdgm.fit(model, GaussianMLPEncoder(64, 4, (16,)), "digits-binary", "cd", steps=1, progress=False)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ppdgm.get_method("pcd", k=0)


def test_pcd_chains_persist_and_are_checkpointed(tmp_path):
    data = ppdgm.data.load("digits-binary")
    rbm = RBM(64, 8)
    run = ppdgm.fit(rbm, None, data, "pcd", epochs=1, progress=False, checkpoint_dir=tmp_path)
    chains = run.method.chains
    assert chains is not None and chains.shape == (100, 64)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["method"]["chains"]
    assert saved.shape == chains.shape

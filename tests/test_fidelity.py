"""Sample-quality metrics: torchmetrics' inception score and FID against their closed forms, on tiny networks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import ppdgm
from ppdgm.data.named import load
from ppdgm.evaluate import fidelity
from ppdgm.evaluate.judges import label_accuracy


def test_the_inception_score_is_exp_of_the_mean_kl_to_the_marginal():
    torch.manual_seed(0)
    net, rows = torch.nn.Linear(64, 10), torch.rand(300, 64)
    probs = torch.softmax(net(rows).double(), -1).detach()
    marginal = probs.mean(0, keepdim=True)
    expected = (probs * (probs.log() - marginal.log())).sum(-1).mean().exp().item()
    mean, _ = fidelity.inception_score(rows, fidelity.ClassifierLogits(net), splits=1)
    assert mean == pytest.approx(expected, rel=1e-5)
    mean, std = fidelity.inception_score(rows, fidelity.ClassifierLogits(net), splits=10)
    assert 1.0 <= mean <= 10.0 and std > 0


def test_the_frechet_distance_is_the_closed_form_between_fitted_gaussians():
    torch.manual_seed(0)
    features = torch.nn.Linear(64, 6)
    real, fake = torch.rand(400, 64), torch.rand(300, 64) * 0.8 + 0.15
    a, b = (features(r).double().detach().numpy() for r in (real, fake))
    covmean = scipy.linalg.sqrtm(np.cov(a.T) @ np.cov(b.T)).real
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(np.cov(a.T) + np.cov(b.T) - 2 * covmean)
    assert fidelity.frechet_distance(real, fake, features, chunk=128) == pytest.approx(expected, rel=1e-4)
    assert fidelity.frechet_distance(real, real, features) == pytest.approx(0.0, abs=1e-4)


def test_the_standard_inception_needs_a_weights_file_and_says_where_to_get_it(tmp_path):
    with pytest.raises(ppdgm.PpdgmError, match="pt_inception-2015-12-05"):
        fidelity.inception_network(tmp_path / "missing.pth", (3, 32, 32))


def test_class_accuracy_counts_the_samples_recognised_as_their_condition():
    classifier = torch.nn.Identity()
    labels = fidelity.balanced_labels(20, 4)
    rows = labels.clone()
    rows[:5] = torch.roll(rows[:5], 1, -1)  # 5 of 20 misclassified
    assert fidelity.class_accuracy(classifier, rows, labels) == 0.75


def test_label_accuracy_reads_the_guides_proposal_for_the_hidden_labels():
    from ppdgm.models import SemiSupervisedVAE

    data = load("digits-binary", columns="x,y,labelled", labelled=3)
    m2 = SemiSupervisedVAE(64, 10)
    test = data.rows("test")
    x, y, _ = test.args
    predicted = m2.classify(x).argmax(-1)
    expected = float((predicted == y.argmax(-1)).double().mean())
    assert label_accuracy(m2.guide, test, chunk=100) == pytest.approx(expected)

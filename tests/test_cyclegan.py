"""CycleGAN on two unpaired domains built from the embedded digits (digits and inverted digits)."""

import pytest
import torch

import ppdgm
from ppdgm.evaluate.judges import train_classifier
from ppdgm.models import CycleTranslators
from ppdgm.programs.pair import ConventionError


def test_unpaired_rows_join_independently_shuffled_domains():
    data = ppdgm.data.load("digits-inverted")
    a, b = data.train[:, :64], data.train[:, 64:]
    assert data.train.shape == (1300, 128)
    assert not torch.equal(b, 1 - a)  # not paired
    assert torch.equal(b.sort(0).values, (1 - a).sort(0).values)  # but the same rows, inverted
    assert set(data.labels) == {f"{s}_{d}" for s in ("train", "valid", "test") for d in "ab"}


def test_cyclegan_lowers_cycle_error_and_translations_keep_the_digit():
    data = ppdgm.data.load("digits-inverted")
    torch.manual_seed(0)
    model = CycleTranslators((64, 64), image_side=8)
    run = ppdgm.fit(
        model,
        None,
        data,
        "cyclegan",
        steps=800,
        batch_size=64,
        lr=1e-3,
        optimizer_options={"betas": (0.5, 0.999)},
        progress=False,
        validate_every=0,
    )
    first, last = run.history[0]["train_cycle_error"], run.history[-1]["train_cycle_error"]
    assert last < 0.2 * first, (first, last)
    classify_b = train_classifier(data.train[:, 64:], data.labels["train_b"])
    classify_a = train_classifier(data.train[:, :64], data.labels["train_a"])
    with torch.no_grad():
        kept_ab = (classify_b(model.ab.net(data.test[:, :64])).argmax(-1) == data.labels["test_a"]).float().mean()
        kept_ba = (classify_a(model.ba.net(data.test[:, 64:])).argmax(-1) == data.labels["test_b"]).float().mean()
    # measured at 800 steps: see README (chance is 0.1)
    assert kept_ab > 0.8 and kept_ba > 0.8, (kept_ab, kept_ba)


def test_cyclegan_refuses_another_model():
    with pytest.raises(ConventionError, match="pair of translators"):
        ppdgm.fit(ppdgm.models.MLPGenerator(128), None, "digits-inverted", "cyclegan", steps=1, progress=False)

"""The convolutional image models: exact pixel likelihood, shapes, and every method that applies trains them."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

import ppdgm
from ppdgm.data.named import load
from ppdgm.models import ConvDiscriminator, ConvGenerator, ConvVAE, DiscretizedLogistic
from ppdgm.models.convolutional import image_shape_of
from ppdgm.zoo import build

BINS = torch.arange(256, dtype=torch.float64) / 255


@pytest.mark.parametrize(("loc", "scale"), [(0.5, 0.1), (0.0, 0.01), (1.0, 0.3), (0.3, 1e-4), (-2.0, 0.05), (0.7, 5.0)])
def test_the_discretized_logistic_puts_mass_one_on_the_256_levels(loc, scale):
    fn = DiscretizedLogistic(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    mass = fn.log_prob(BINS).exp()
    assert mass.sum().item() == pytest.approx(1.0, abs=1e-6)
    inner = (BINS[100] - loc) / scale
    expected = torch.sigmoid(inner + 1 / 510 / scale) - torch.sigmoid(inner - 1 / 510 / scale)
    if expected > 1e-5:
        assert mass[100].item() == pytest.approx(expected.item(), rel=1e-9)


def test_discretized_logistic_samples_are_8_bit_levels_near_the_location():
    fn = DiscretizedLogistic(torch.full((20000,), 0.4), torch.full((20000,), 0.02))
    x = fn.sample()
    assert torch.equal((x * 255).round() / 255, x) and abs(x.mean().item() - 0.4) < 0.005


@pytest.mark.parametrize("x_dim, shape", [(64, (1, 8, 8)), (784, (1, 28, 28)), (3072, (3, 32, 32))])
def test_image_shapes_are_inferred_and_the_pair_maps_them(x_dim, shape):
    assert image_shape_of(x_dim) == shape
    generator = ConvGenerator(shape, z_dim=8, channels=(16, 8))
    with pyro.poutine.trace() as tr:
        generator(torch.zeros(5, x_dim))
    assert tr.trace.nodes["x"]["fn"].v.shape == (5, x_dim)
    assert ConvDiscriminator(shape, channels=(8, 16)).net(torch.rand(5, x_dim)).shape == (5, 1)
    assert ConvDiscriminator(shape, channels=(8, 16), extra=10).net(torch.rand(5, x_dim + 10)).shape == (5, 1)
    with pytest.raises(ppdgm.PpdgmError, match="divisible by 4"):
        ConvGenerator((1, 10, 10))


def _digits(columns: str = "x", binary: bool = True):
    return load("digits-binary" if binary else "digits", columns=columns)


def _train(model, guide, data, method, **options):
    pyro.clear_param_store()
    return ppdgm.fit(model, guide, data, method, steps=4, batch_size=32, progress=False, **options)


@pytest.mark.parametrize("method", ["vae", "iwae", "rws", "aavae", "ws"])
def test_the_conv_vae_trains_with_every_likelihood_method(method):
    model, guide = build("conv-vae", 64, z_dim=4, channels=(8, 8))
    run = _train(model, guide, _digits(), method)
    assert all(math.isfinite(v) for k, v in run.history[-1].items() if k.startswith("train_"))


def test_the_logistic_conv_vae_scores_8_bit_images():
    vae = ConvVAE((3, 8, 8), z_dim=4, channels=(8, 8), likelihood="logistic")
    images = torch.randint(0, 256, (64, 192)).float() / 255
    run = _train(vae.model, vae.guide, images, "iwae", num_particles=3)
    assert all(math.isfinite(v) for k, v in run.history[-1].items() if k.startswith("train_"))


@pytest.mark.parametrize("method", ["gan", "iwgan"])
def test_the_dcgan_pair_trains_unconditional_and_class_conditional(method):
    model, _ = build("conv-gan", 64, z_dim=8, channels=(16, 8))
    run = _train(model, None, _digits(binary=False), method)
    assert run.method.discriminator.__class__ is ConvDiscriminator
    conditional, _ = build("conv-gan", 64, z_dim=8, channels=(16, 8), classes=10)
    run = _train(conditional, None, _digits("x,y", binary=False), method)
    assert run.method.discriminator.net.extra == 10
    labels = torch.nn.functional.one_hot(torch.arange(10).repeat(3), 10).float()
    images = ppdgm.sample(run, 30, condition=labels)
    assert images.shape == (30, 64)


def test_a_conditional_conv_vae_needs_its_labels():
    model, guide = build("conv-vae", 64, z_dim=4, channels=(8, 8), classes=10)
    run = _train(model, guide, _digits("x,y"), "vae")
    assert run.config["columns"].startswith("0: (64,)")
    with pytest.raises(ppdgm.PpdgmError, match="one-hot labels of 10 classes"):
        _train(model, guide, _digits(), "vae")


def test_the_conditional_discriminator_scores_how_an_image_fits_its_label():
    """A projection discriminator: the label's effect on the logit depends on the image (an additive label
    term could not tell a 3 labelled 7 from a 7 labelled 7)."""
    torch.manual_seed(0)
    net = ConvDiscriminator((1, 8, 8), channels=(8, 16), extra=10).net
    x = torch.rand(6, 64)
    a, b = torch.nn.functional.one_hot(torch.full((6,), 3), 10).float(), torch.eye(10)[[7] * 6]
    effect = net(torch.cat([x, a], -1)) - net(torch.cat([x, b], -1))
    assert effect.std() > 1e-3  # varies with x

"""IWGAN and AAVAE: the algorithms the unified view transfers across the GAN/VAE divide."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import ppdgm
from ppdgm.guides import Discriminator, GaussianMLPEncoder
from ppdgm.inference import AAVAE, GAN, IWGAN
from ppdgm.programs.combine import mean

from .test_adversarial import user_generator_pair


def _log_normal(x, loc):
    return -0.5 * (x - loc) ** 2 - 0.5 * math.log(2 * math.pi)


def _optimal_1d(data_loc, gen_loc):
    """The optimal discriminator of N(data_loc, 1) vs N(gen_loc, 1): its logit is linear in x."""
    net = nn.Linear(1, 1).double()
    with torch.no_grad():
        net.weight.fill_(data_loc - gen_loc)
        net.bias.fill_(0.5 * (gen_loc**2 - data_loc**2))
    return Discriminator(net)


def _gaussian_generator(loc_param):
    def generator(x=None, batch_size=None):
        loc = pyro.param("loc", loc_param)
        n = x.shape[0] if x is not None else batch_size
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Delta(loc + z, event_dim=1), obs=x)

    return generator


def _setup(method, data, generator):
    programs = ppdgm.ProgramPair(generator, None)
    programs.inspect(data)
    method.setup(programs)
    return programs


def test_iwgan_weights_are_the_density_ratio_normalised_in_the_group(float64):
    data = torch.randn(8, 1, dtype=torch.float64) + 1.0
    method = IWGAN(num_particles=6, discriminator=_optimal_1d(1.0, -0.5))
    programs = _setup(method, data, _gaussian_generator(torch.tensor(-0.5, dtype=torch.float64)))
    fake = method.generate(programs, 8).detach()
    assert fake.shape == (6, 8, 1)
    weights = torch.softmax(method.log_weights(fake), 0)
    ratio = (_log_normal(fake, 1.0) - _log_normal(fake, -0.5)).squeeze(-1).exp()  # p_data / p_g
    assert torch.allclose(weights, ratio / ratio.sum(0, keepdim=True), atol=1e-12)


def test_iwgan_with_one_particle_has_the_gan_generator_gradient(float64):
    data = torch.randn(16, 1, dtype=torch.float64) + 1.0
    grads = []
    for method in (
        IWGAN(num_particles=1, discriminator=_optimal_1d(1.0, 0.2)),
        GAN(discriminator=_optimal_1d(1.0, 0.2)),
    ):
        pyro.clear_param_store()
        programs = _setup(method, data, _gaussian_generator(torch.tensor(0.2, dtype=torch.float64)))
        pyro.set_rng_seed(3)
        if isinstance(method, IWGAN):
            loss = method.generator_loss_of(method.generate(programs, 16))
        else:
            fake = ppdgm.methods.adversarial.generated_x(programs, programs.model_side(16))
            loss = method.generator_loss_of(fake)
        (grad,) = torch.autograd.grad(loss, pyro.param("loc").unconstrained())
        grads.append(grad)
    assert grads[0].abs() > 1e-3 and torch.equal(grads[0], grads[1])


def test_iwgan_weighting_changes_the_gradient_for_k_above_one(float64):
    data = torch.randn(16, 1, dtype=torch.float64) + 1.0
    method = IWGAN(num_particles=5, discriminator=_optimal_1d(1.0, 0.2))
    programs = _setup(method, data, _gaussian_generator(torch.tensor(0.2, dtype=torch.float64)))
    fake = method.generate(programs, 16)
    rows = fake.reshape(-1, 1)
    uniform = -method.adversary.log_prob(rows, torch.zeros(80), reversed=True).mean()
    loc = pyro.param("loc").unconstrained()
    weighted_grad = torch.autograd.grad(method.generator_loss_of(fake), loc, retain_graph=True)[0]
    uniform_grad = torch.autograd.grad(uniform, loc)[0]
    assert not torch.allclose(weighted_grad, uniform_grad)


class _PerfectDiscriminator(nn.Module):
    """Knows the real rows: logit +200 on them and -200 elsewhere, so D is exactly 1 or 0 in float32."""

    def __init__(self, real: torch.Tensor) -> None:
        super().__init__()
        self.real = real
        self.dummy = nn.Linear(1, 1)

    def forward(self, inputs, y=None):
        pyro.module("perfect", self.dummy)
        is_real = (inputs.unsqueeze(1) == self.real.unsqueeze(0)).all(-1).any(-1)
        logits = torch.where(is_real, 200.0, -200.0)
        with pyro.plate("rows", inputs.shape[0]):
            return pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def test_aavae_with_a_perfect_discriminator_is_the_vae_objective_exactly():
    data = ppdgm.data.load("digits-binary")
    x = data.train[:50]
    model = ppdgm.models.BernoulliMLPModel(64, 4, (32,))
    guide = GaussianMLPEncoder(64, 4, (32,))
    method = AAVAE(discriminator=_PerfectDiscriminator(x))
    programs = ppdgm.ProgramPair(model, guide)
    programs.inspect(x)
    method.setup(programs)
    with torch.no_grad():
        fake = ppdgm.methods.adversarial.generated_x(programs, programs.model_side(50))
    pyro.set_rng_seed(11)
    aavae, _, w_real, w_fake = method.weighted_elbo(programs, x, fake)
    pyro.set_rng_seed(11)
    vae = mean(programs.data_side(x, 1).log_weights).mean()
    assert torch.equal(w_real, torch.ones(50)) and torch.equal(w_fake, torch.zeros(50))
    assert torch.equal(aavae, vae)
    # an imperfect discriminator weights both: the objective moves away from the VAE's
    method_half = AAVAE(discriminator=Discriminator(nn.Linear(64, 1)))
    method_half.setup(programs)
    pyro.set_rng_seed(11)
    assert not torch.equal(method_half.weighted_elbo(programs, x, fake)[0], vae)


def test_aa_svae_on_data_columns_is_the_semi_supervised_vae_with_a_perfect_discriminator():
    """AA-SVAE: generated rows carry the dreamt label, the discriminator sees x beside the inputs (the mask)."""
    from ppdgm.models import SemiSupervisedVAE

    batch = ppdgm.data.load("digits-binary", columns="x,y,labelled", labelled=3).train[:40]
    m2 = SemiSupervisedVAE(64, 10, z_dim=3, hidden=(16,))
    programs = ppdgm.ProgramPair(m2.model, m2.guide)
    programs.inspect(batch)
    assert programs.obs_site == "x"  # the first observed column is the primary site, whatever the trace order
    real_seen = AAVAE.view(programs, programs.observed_of(batch), batch)
    assert real_seen.shape == (40, 64 + 1)
    method = AAVAE(discriminator=_PerfectDiscriminator(real_seen))
    method.setup(programs)
    with torch.no_grad():
        dream = programs.model_side(batch)
        fake = programs.dreamt_batch(dream)
    labelled = batch.get(2)
    assert torch.equal(fake.get(2), labelled)  # inputs kept; where labelled, the row's label is the dreamt one
    assert torch.equal(fake.get(1)[labelled], dream.nodes["y"]["value"][labelled])
    pyro.set_rng_seed(5)
    objective, _, w_real, w_fake = method.weighted_elbo(programs, batch, fake)
    pyro.set_rng_seed(5)
    svae = programs.data_side(batch, 1).elbo().mean()  # the missing labels summed out exactly
    assert torch.equal(w_real, torch.ones(40)) and torch.equal(w_fake, torch.zeros(40))
    assert torch.equal(objective, svae)


@pytest.mark.parametrize("method", ["iwgan", "aavae"])
def test_unified_methods_train_a_user_pair_by_name(method):
    data = ppdgm.data.load("ring8")
    model, guide, gen, _ = user_generator_pair()
    before = [p.detach().clone() for p in gen.parameters()]
    run = ppdgm.fit(model, guide, data, method, steps=30, batch_size=64, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, gen.parameters()))
    assert all(math.isfinite(v) for k, v in run.history[-1].items() if k.startswith(("train_", "valid_")))

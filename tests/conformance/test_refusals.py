"""What ppdgm cannot compute as Pyro would, it refuses, naming the site."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import ppdgm


class EnumeratedGenerator(nn.Module):
    """A generator whose mixture component is marked for enumeration: a GAN cannot sum it out."""

    def __init__(self, x_dim=64, z_dim=4, components=3):
        super().__init__()
        self.components, self.z_dim = components, z_dim
        self.net = nn.Linear(z_dim + components, x_dim)

    def forward(self, x):
        pyro.module("generator", self)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample(
                "c", dist.OneHotCategorical(logits=x.new_zeros(self.components)), infer={"enumerate": "parallel"}
            )
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            h = torch.cat([z, c.expand(*z.shape[:-1], self.components)], -1)
            pyro.sample("x", dist.Normal(torch.sigmoid(self.net(h)), 0.1).to_event(1), obs=x)


@pytest.mark.parametrize("method", ["gan", "wgan-gp", "iwgan", "gmmn"])
def test_generative_methods_refuse_an_enumerated_site_by_name(method):
    x = ppdgm.data.load("digits").train[:64]
    with pytest.raises(ppdgm.PpdgmError, match=r"enumerated site\(s\) \['c'\]"):
        ppdgm.fit(EnumeratedGenerator(), None, x, method, steps=1, batch_size=32, progress=False)


def test_iwae_with_a_global_site_refuses_a_data_parallel_fit(monkeypatch):
    """The batch's joint weight cannot be split over ranks: refused by name rather than computed per rank."""
    from pyro.infer.autoguide import AutoNormal

    from ppdgm.inference import IWAE
    from ppdgm.programs.pair import ProgramPair

    def model(x):
        mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)

    programs = ProgramPair(model, AutoNormal(model))
    programs.inspect(torch.randn(6))
    monkeypatch.setattr(ppdgm.runtime.distributed, "world_size", lambda: 2)
    with pytest.raises(ppdgm.PpdgmError, match=r"global site\(s\) \['mu', 'mu_unconstrained'\]"):
        IWAE(num_particles=3).setup(programs)

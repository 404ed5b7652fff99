"""Pyro's conditional VAE example (Sohn et al. 2015): predict the masked quadrants of a digit from the one shown.

As the example writes it: the inputs ``xs`` hold the shown quadrant with -1 elsewhere, the targets ``ys`` the whole
digit with -1 where shown; a baseline network's prediction conditions the prior; the observed site ``y`` reads only
the masked pixels (``ys[(xs == -1)]``), so no data column holds its values as they are; with ``ys=None`` the model
records its prediction as ``pyro.deterministic("y", ...)``.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from sklearn.datasets import load_digits
from torch import nn

import ppdgm
from ppdgm.programs.sites import ConventionError

from .harness import assert_same_objective

SIDE, Z_DIM = 8, 2

# Pyro warns, as it does when the example runs, that the frozen baseline's weights are not in the param store
pytestmark = pytest.mark.filterwarnings("ignore:baseline_net.*requires_grad=False:UserWarning")


def masked_quadrants(n=300, seed=0):
    """Digits with the top-left quadrant shown (xs) and the other three to predict (ys); -1 marks what is not."""
    images = torch.tensor(load_digits().data[:n] / 16.0 > 0.5, dtype=torch.get_default_dtype()).reshape(n, SIDE, SIDE)
    shown = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    shown[: SIDE // 2, : SIDE // 2] = True
    xs = torch.where(shown, images, torch.full_like(images, -1.0)).reshape(n, -1)
    ys = torch.where(shown, torch.full_like(images, -1.0), images).reshape(n, -1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return xs[order], ys[order]


class BaselineNet(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(SIDE * SIDE, hidden), nn.ReLU(), nn.Linear(hidden, SIDE * SIDE))

    def forward(self, x):
        return torch.sigmoid(self.net(x.view(-1, SIDE * SIDE)))


class Encoder(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(SIDE * SIDE, hidden), nn.ReLU())
        self.loc, self.scale = nn.Linear(hidden, Z_DIM), nn.Linear(hidden, Z_DIM)

    def forward(self, x, y):
        xc = x.clone()  # the example's: put x's shown pixels into y's -1 holes
        xc[x == -1] = y[x == -1]
        hidden = self.body(xc.view(-1, SIDE * SIDE))
        return self.loc(hidden), torch.exp(self.scale(hidden))


class Decoder(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(Z_DIM, hidden), nn.ReLU(), nn.Linear(hidden, SIDE * SIDE))

    def forward(self, z):
        return torch.sigmoid(self.net(z))


class CVAE(nn.Module):
    def __init__(self, pre_trained_baseline_net):
        super().__init__()
        self.baseline_net = pre_trained_baseline_net
        self.prior_net = Encoder()
        self.generation_net = Decoder()
        self.recognition_net = Encoder()

    def model(self, xs, ys=None):
        pyro.module("generation_net", self)
        batch_size = xs.shape[0]
        with pyro.plate("data"):
            with torch.no_grad():
                y_hat = self.baseline_net(xs).view(xs.shape)
            prior_loc, prior_scale = self.prior_net(xs, y_hat)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            loc = self.generation_net(zs)
            if ys is not None:
                mask_loc = loc[(xs == -1).view(-1, SIDE * SIDE)].view(batch_size, -1)
                mask_ys = ys[xs == -1].view(batch_size, -1)
                pyro.sample("y", dist.Bernoulli(mask_loc, validate_args=False).to_event(1), obs=mask_ys)
            else:
                pyro.deterministic("y", loc.detach())
            return loc

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                y_hat = self.baseline_net(xs).view(xs.shape)
                loc, scale = self.prior_net(xs, y_hat)
            else:
                loc, scale = self.recognition_net(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def baseline_net(xs, ys, steps=300):
    """The example's first stage: a deterministic net trained on the masked pixels' binary cross-entropy."""
    torch.manual_seed(0)
    net = BaselineNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy(net(xs)[xs == -1], ys[xs == -1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.requires_grad_(False)  # frozen, as the example freezes it


def test_cvae_objective_equals_pyro(float64):
    xs, ys = masked_quadrants(40)
    cvae = CVAE(baseline_net(xs, ys, steps=5))
    programs = assert_same_objective(cvae.model, cvae.guide, (xs[:16], ys[:16]), elbo=Trace_ELBO())
    assert not programs.holds_observations()  # y observes a gather of the masked pixels


def test_cvae_trains_is_evaluated_and_sampled_by_site():
    xs, ys = masked_quadrants(300)
    train, test = (xs[:250], ys[:250]), (xs[250:], ys[250:])
    cvae = CVAE(baseline_net(*train))

    def held_out():
        return ppdgm.evaluate.log_likelihood(
            cvae.model, cvae.guide, test, 50, batch_size=50, vectorize_particles=False, compile=False
        ).mean

    before = held_out()
    run = ppdgm.fit(  # boolean-mask indexing has value-dependent shapes: the step runs eagerly
        cvae.model, cvae.guide, train, "vae", epochs=30, batch_size=50, lr=3e-3, compile=False, progress=False
    )
    after = held_out()
    assert after > before + 1.0, (before, after)
    draws = ppdgm.sample(run, 6)
    assert set(draws) == {"y"} and draws["y"].shape == (6, 48)  # the 48 masked pixels of each row
    assert set(draws["y"].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ConventionError, match=r"no data column holds the draws of the observed site\(s\) \['y'\]"):
        ppdgm.evaluate.sampling.sample_rows(run, 6)
    with pytest.raises(ConventionError, match=r"observed site\(s\) \['y'\] observe no data column as it is"):
        ppdgm.fit(cvae.model, cvae.guide, train, "ws", steps=1, progress=False)

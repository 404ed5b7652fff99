"""Ordinary Pyro programs run unchanged: SVI's calling convention, same numbers as Pyro's own estimators."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from torch import nn

import ppdgm
from ppdgm.inference import IWAE, VAE
from ppdgm.programs.handlers import unconstrained_params
from ppdgm.programs.pair import ProgramPair


# ---------------------------------------------------------------- Pyro's example VAE, in its own shape
class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, x_dim=64):
        super().__init__()
        self.x_dim = x_dim
        self.fc1 = nn.Linear(x_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, self.x_dim)
        hidden = self.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, x_dim=64):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, x_dim)
        self.softplus = nn.Softplus()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        return torch.sigmoid(self.fc21(hidden))


class PyroExampleVAE(nn.Module):
    """pyro/examples/vae/vae.py, sized for 8x8 digits: `model(self, x)`, site "obs", no batch_size."""

    def __init__(self, z_dim=4, hidden_dim=32, x_dim=64):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim, x_dim)
        self.decoder = Decoder(z_dim, hidden_dim, x_dim)
        self.z_dim, self.x_dim = z_dim, x_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x.reshape(-1, self.x_dim))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def digit_images():
    """The embedded binary digits as (N, 1, 8, 8) images, as a torchvision loader would hand them over."""
    data = ppdgm.data.load("digits-binary")
    return data.train.reshape(-1, 1, 8, 8), data.test.reshape(-1, 1, 8, 8)


@pytest.mark.parametrize(
    ("method", "options"),
    [("vae", {}), ("iwae", {"num_particles": 5}), ("rws", {"num_particles": 5}), ("ws", {})],
)
def test_pyro_example_vae_trains_unchanged_with_every_wake_sleep_method(method, options):
    train, test = digit_images()
    vae = PyroExampleVAE()
    before = ppdgm.evaluate.iwae_bound(vae.model, vae.guide, test, 50).mean
    run = ppdgm.fit(vae.model, vae.guide, train, method, epochs=8, lr=3e-3, progress=False, seed=0, **options)
    after = ppdgm.evaluate.iwae_bound(vae.model, vae.guide, test, 50).mean
    assert run.programs.obs_site == "obs" and run.programs.structure.latent_sites == ("latent",)
    assert after > before + 5, (before, after)  # measured: about -44 before, -24 to -26 after 8 epochs
    draws = ppdgm.sample(run, 16)
    assert draws.shape == (16, 1, 8, 8) and set(draws.unique().tolist()) <= {0.0, 1.0}
    assert ppdgm.sample(vae.model, 3, like=test[:5], mean=True).shape == (3, 1, 8, 8)


# ---------------------------------------------------------------- same seed, same numbers as Pyro
def _pair(float64):
    vae = PyroExampleVAE(z_dim=3, hidden_dim=16).double()
    x = digit_images()[0][:6].double()
    return vae, x


def _grads(loss, params):
    return torch.autograd.grad(loss, params)


def _params(programs):
    store = unconstrained_params()
    return [store[n] for n in programs.structure.model_param_names + programs.structure.guide_param_names]


def test_vae_equals_pyro_trace_elbo(float64):
    vae, x = _pair(float64)
    programs = ProgramPair(vae.model, vae.guide)
    programs.inspect(x)
    params = _params(programs)
    pyro.set_rng_seed(3)
    ours = VAE(num_particles=1).loss(programs, x)[0]
    pyro.set_rng_seed(3)
    theirs = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x) / x.shape[0]
    assert torch.allclose(ours, theirs, atol=1e-10, rtol=0)
    for a, b in zip(_grads(ours, params), _grads(theirs, params)):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("num_particles", [1, 7])
def test_iwae_equals_pyro_renyi_alpha_zero_at_batch_one(float64, num_particles):
    vae, x = _pair(float64)
    x = x[:1]
    programs = ProgramPair(vae.model, vae.guide)
    programs.inspect(x)
    params = _params(programs)
    pyro.set_rng_seed(5)
    ours = IWAE(num_particles=num_particles).loss(programs, x)[0]
    pyro.set_rng_seed(5)
    renyi = RenyiELBO(alpha=0, num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    theirs = renyi.loss_and_grads(vae.model, vae.guide, x)  # Pyro offers only the float and .grad here
    assert ours.item() == pytest.approx(theirs, abs=1e-10, rel=0)
    for a, p in zip(_grads(ours, params), params):
        assert torch.allclose(a, p.grad, atol=1e-10, rtol=0)


# ---------------------------------------------------------------- enumeration, against TraceEnum_ELBO
class ClassAndStyle(nn.Module):
    """A one-hot class y beside a Gaussian z; the guide's y is enumerated (config_enumerate)."""

    def __init__(self, classes=3, z_dim=2, x_dim=64):
        super().__init__()
        self.classes = classes
        self.dec_z, self.dec_y = nn.Linear(z_dim, x_dim), nn.Linear(classes, x_dim, bias=False)
        self.enc_y, self.enc_z = nn.Linear(x_dim, classes), nn.Linear(x_dim, 2 * z_dim)
        self.enc_zy = nn.Linear(classes, z_dim, bias=False)

    def model(self, x):
        pyro.module("dec_z", self.dec_z)
        pyro.module("dec_y", self.dec_y)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(self.classes)))
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.enc_zy.out_features]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec_z(z) + self.dec_y(y)).to_event(1), obs=x)

    @config_enumerate
    def guide(self, x):
        pyro.module("enc_y", self.enc_y)
        pyro.module("enc_z", self.enc_z)
        pyro.module("enc_zy", self.enc_zy)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=self.enc_y(x)))
            loc, raw = self.enc_z(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc + self.enc_zy(y), nn.functional.softplus(raw)).to_event(1))


class MixturePrior(nn.Module):
    """z from a 3-component mixture whose component c is enumerated in the model; the guide samples z only."""

    def __init__(self, components=3, z_dim=2, x_dim=64):
        super().__init__()
        self.means = nn.Parameter(torch.randn(components, z_dim))
        self.dec = nn.Linear(z_dim, x_dim)
        self.enc = nn.Linear(x_dim, 2 * z_dim)

    def model(self, x):
        pyro.module("prior", self, update_module_params=False)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample(
                "c", dist.Categorical(logits=x.new_zeros(self.means.shape[0])), infer={"enumerate": "parallel"}
            )
            z = pyro.sample("z", dist.Normal(self.means[c], 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))


@pytest.mark.parametrize("pair", [ClassAndStyle, MixturePrior], ids=["guide-enumerated", "model-enumerated"])
def test_enumerated_vae_equals_pyro_trace_enum_elbo(float64, pair):
    programs_of = pair().double()
    x = ppdgm.data.load("digits-binary").train[:5].double()
    programs = ProgramPair(programs_of.model, programs_of.guide)
    structure = programs.inspect(x)
    assert structure.enumerated == (("y",) if pair is ClassAndStyle else ("c",))
    params = _params(programs)
    pyro.set_rng_seed(11)
    ours = VAE().loss(programs, x)[0]
    pyro.set_rng_seed(11)
    theirs = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(programs_of.model, programs_of.guide, x) / 5
    assert torch.allclose(ours, theirs, atol=1e-10, rtol=0)
    for a, b in zip(_grads(ours, params), _grads(theirs, params)):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


def test_enumerated_iwae_sums_inside_each_weight_and_bounds_the_exact_sum(float64):
    """With y enumerated, w_k = sum_y p(x, y, z_k^y) / q(z_k^y | x, y): checked by hand on the same draws."""
    pair = ClassAndStyle().double()
    x = ppdgm.data.load("digits-binary").train[:4].double()
    programs = ProgramPair(pair.model, pair.guide)
    programs.inspect(x)
    side = programs.data_side(x, 6)
    z = side.guide_trace.nodes["z"]["value"]  # (3 classes, 6 particles, 4 rows, 2)
    assert z.shape == (3, 6, 4, 2)
    eye = torch.eye(3, dtype=torch.float64).reshape(3, 1, 1, 3)
    loc, raw = pair.enc_z(x).chunk(2, -1)
    log_q_z = dist.Normal(loc + pair.enc_zy(eye), nn.functional.softplus(raw)).log_prob(z).sum(-1)
    log_p = (
        dist.OneHotCategorical(logits=torch.zeros(3, dtype=torch.float64)).log_prob(eye)
        + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        + dist.Bernoulli(logits=pair.dec_z(z) + pair.dec_y(eye)).log_prob(x).sum(-1)
    )
    by_hand = torch.logsumexp(log_p - log_q_z, 0)  # (6, 4)
    assert torch.allclose(side.log_weights, by_hand, atol=1e-10)
    q_y = torch.softmax(pair.enc_y(x), -1).T.unsqueeze(1)  # (3, 1, 4)
    elbo_by_hand = (q_y * (log_p - log_q_z - q_y.log())).sum(0)
    assert torch.allclose(side.expected_log_weights, elbo_by_hand, atol=1e-10)


@pytest.mark.parametrize(("method", "site"), [("rws", "y"), ("ws", "y"), ("gan", "y"), ("iwae-dreg", "y")])
def test_methods_that_cannot_sum_out_an_enumerated_site_refuse_it_by_name(method, site):
    pair = ClassAndStyle()
    x = ppdgm.data.load("digits-binary").train
    options = {"guide_gradient": "dreg"} if method == "iwae-dreg" else {}
    name = method.split("-")[0]
    with pytest.raises(ValueError, match=rf"(enumerated site\(s\) \['{site}'\])"):
        ppdgm.fit(pair.model, pair.guide, x, name, steps=1, progress=False, **options)


@pytest.mark.parametrize(("method", "options"), [("vae", {}), ("iwae", {"num_particles": 4})])
def test_enumerated_pairs_train(method, options):
    pair = ClassAndStyle(classes=10, z_dim=4)
    data = ppdgm.data.load("digits-binary")
    before = ppdgm.evaluate.elbo(pair.model, pair.guide, data.test, 10).mean
    ppdgm.fit(pair.model, pair.guide, data, method, epochs=5, lr=1e-2, progress=False, seed=0, **options)
    after = ppdgm.evaluate.elbo(pair.model, pair.guide, data.test, 10).mean
    assert after > before + 10, (before, after)


@pytest.mark.parametrize(("method", "options"), [("vae", {}), ("iwae", {"num_particles": 3})])
def test_a_pyro_autoguide_trains_on_the_whole_data_as_one_batch(method, options):
    from pyro.infer.autoguide import AutoNormal

    decoder = nn.Linear(2, 64)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    x = ppdgm.data.load("digits-binary").train[:200]
    guide = AutoNormal(model)  # one (loc, scale) per datapoint: the batch is the data set
    run = ppdgm.fit(model, guide, x, method, epochs=60, batch_size=200, lr=3e-2, progress=False, **options)
    first, last = run.history[0], run.history[-1]
    key = next(k for k in last if k.startswith("train_"))
    assert last[key] > first[key] + 3, (first, last)

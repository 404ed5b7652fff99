"""Programs in the shapes of Pyro's examples and tutorials, written as Pyro writes them: same objective as SVI."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample

import ppdgm

from .harness import assert_same_objective

# ---------------------------------------------------------------- eight schools (Rubin 1981), as Pyro's example
SCHOOLS = torch.tensor(
    [[28.0, 15.0], [8.0, 10.0], [-3.0, 16.0], [7.0, 11.0], [-1.0, 9.0], [1.0, 11.0], [18.0, 10.0], [12.0, 18.0]]
)


def schools_model(data):
    """Treatment effects y with known standard errors sigma, the two read as columns of one tensor."""
    y, sigma = data[:, 0], data[:, 1]
    mu = pyro.sample("mu", dist.Normal(data.new_zeros(()), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(data.new_full((), 5.0)))
    with pyro.plate("schools", data.shape[0]):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def schools_guide(data):
    mu_loc = pyro.param("mu_loc", data.new_zeros(()))
    mu_scale = pyro.param("mu_scale", data.new_ones(()), constraint=constraints.positive)
    tau_loc = pyro.param("tau_loc", data.new_zeros(()))
    tau_scale = pyro.param("tau_scale", data.new_ones(()), constraint=constraints.positive)
    theta_loc = pyro.param("theta_loc", data.new_zeros(data.shape[0]))
    theta_scale = pyro.param("theta_scale", data.new_ones(data.shape[0]), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(mu_loc, mu_scale))
    pyro.sample("tau", dist.LogNormal(tau_loc, tau_scale))
    with pyro.plate("schools", data.shape[0]):
        pyro.sample("theta", dist.Normal(theta_loc, theta_scale))


@pytest.mark.parametrize(("method", "particles"), [("vae", 1), ("iwae", 4)])
def test_eight_schools_objective_equals_pyro(float64, method, particles):
    assert_same_objective(schools_model, schools_guide, SCHOOLS.double(), method=method, num_particles=particles)


def test_eight_schools_trains_and_is_evaluated():
    before = ppdgm.evaluate.elbo(schools_model, schools_guide, SCHOOLS, 200, batch_size=8).values.sum()
    pyro.clear_param_store()
    ppdgm.fit(schools_model, schools_guide, SCHOOLS, "vae", steps=600, batch_size=8, lr=0.05, progress=False)
    after = ppdgm.evaluate.elbo(schools_model, schools_guide, SCHOOLS, 200, batch_size=8).values.sum()
    assert after > before + 5, (before, after)
    with pytest.raises(ppdgm.PpdgmError, match=r"global site\(s\) \['mu', 'tau'\]"):
        ppdgm.evaluate.log_likelihood(schools_model, schools_guide, SCHOOLS, 10, batch_size=8)


def test_data_outside_the_support_of_a_site_reading_part_of_a_column_is_named():
    def model(data):
        with pyro.plate("rows", data.shape[0]):
            pyro.sample("count", dist.Poisson(data.new_ones(())), obs=data[:, 1])

    def guide(data):
        pass

    data = torch.tensor([[0.0, 1.0], [0.0, -2.0], [1.0, 3.0]])
    with pytest.raises(ppdgm.PpdgmError, match=r"site 'count'"):
        ppdgm.fit(model, guide, data, "mle", steps=1, progress=False)


# ---------------------------------------------------------------- handlers applied as calls and as decorators
def _normal_mean_pair():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", x.new_zeros(()))
        scale = pyro.param("scale", x.new_ones(()), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    return model, guide


HANDLED = {
    "scale-as-call": lambda m, g: (poutine.scale(m, 0.5), g),
    "mask-as-call": lambda m, g: (poutine.mask(m, mask=True), g),
    "config-enumerate-as-call": lambda m, g: (m, config_enumerate(g, "parallel", expand=True)),
    "config-enumerate-decorator": lambda m, g: (m, config_enumerate(g)),
    "block-hiding-nothing": lambda m, g: (poutine.block(m, hide=["nothing"]), poutine.block(g, hide=["nothing"])),
    "scale-both": lambda m, g: (poutine.scale(m, scale=0.25), poutine.scale(g, scale=0.25)),
}


@pytest.mark.parametrize("wrap", list(HANDLED), ids=list(HANDLED))
def test_pyro_handlers_applied_as_calls_keep_the_program_and_its_objective(float64, wrap):
    model, guide = HANDLED[wrap](*_normal_mean_pair())
    x = torch.randn(6, dtype=torch.float64) + 1
    assert_same_objective(model, guide, x)


class HandledMethods:
    """Handlers as decorators on methods, as ss-vae decorates its guide."""

    def __init__(self):
        self.loc = torch.nn.Parameter(torch.zeros(()))

    def model(self, x):
        mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)

    @config_enumerate
    def guide(self, x):
        loc = pyro.param("loc", x.new_zeros(()))
        pyro.sample("mu", dist.Normal(loc, 1.0))


def test_handler_decorated_methods_train(float64):
    pair = HandledMethods()
    assert_same_objective(pair.model, pair.guide, torch.randn(5, dtype=torch.float64))
    ppdgm.fit(pair.model, pair.guide, torch.randn(20), "vae", steps=3, batch_size=5, progress=False)


# ---------------------------------------------------------------- a PyroModule regression with AutoNormal
class BayesianRegression(PyroModule):
    """Pyro's Bayesian-regression tutorial: PyroSample weights, a PyroModule[nn.Linear], ``forward(x, y=None)``."""

    def __init__(self, in_features=3):
        super().__init__()
        self.linear = PyroModule[torch.nn.Linear](in_features, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, in_features]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def _regression_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.2 * torch.randn(n, generator=g)
    return x, y


@pytest.mark.parametrize("local_params", [False, True], ids=["param-store", "module-local-params"])
def test_pyro_module_regression_with_autonormal_objective_equals_pyro(float64, local_params):
    x, y = _regression_data()
    with pyro.settings.context(module_local_params=local_params):
        model = BayesianRegression()
        assert_same_objective(model, AutoNormal(model), (x.double(), y.double()))


@pytest.mark.parametrize("local_params", [False, True], ids=["param-store", "module-local-params"])
def test_pyro_module_regression_with_autonormal_trains(local_params):
    x, y = _regression_data()
    with pyro.settings.context(module_local_params=local_params):
        model = BayesianRegression()
        guide = AutoNormal(model)
        run = ppdgm.fit(model, guide, (x, y), "vae", steps=400, batch_size=40, lr=0.05, progress=False)
        with torch.no_grad():
            weight = guide.median()["linear.weight"].flatten()
    assert torch.allclose(weight, torch.tensor([1.0, -2.0, 0.5]), atol=0.2), weight
    assert run.history[-1]["train_elbo"] > run.history[0]["train_elbo"]


# ---------------------------------------------------------------- subsample plates, scaled as Pyro scales them
def subsampling_model(data):
    """The whole data set is the argument; the plate draws a subsample of 5 rows and scales by len(data) / 5."""
    mu = pyro.sample("mu", dist.Normal(data.new_zeros(()), 1.0))
    with pyro.plate("data", len(data), subsample_size=5) as ind:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("obs", dist.Normal(z, 0.5), obs=data[ind])


def subsampling_guide(data):
    loc = pyro.param("loc", data.new_zeros(len(data)))
    mu_loc = pyro.param("mu_loc", data.new_zeros(()))
    pyro.sample("mu", dist.Normal(mu_loc, 1.0))
    with pyro.plate("data", len(data), subsample_size=5) as ind:
        pyro.sample("z", dist.Normal(loc[ind], 1.0))


FULL_SIZE = 1000


def full_size_model(x):
    """A minibatch is the argument; the plate declares the data set's full size, so the batch is scaled up."""
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
    with pyro.plate("data", FULL_SIZE, subsample=torch.arange(len(x))):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def full_size_guide(x):
    pyro.sample("mu", dist.Normal(pyro.param("mu_loc", x.new_zeros(())), 0.1))


@pytest.mark.parametrize(("method", "particles"), [("vae", 1), ("vae", 3), ("iwae", 4)])
@pytest.mark.parametrize("pair", ["subsample-size", "full-size"])
def test_subsample_plates_objective_equals_pyro(float64, pair, method, particles):
    model, guide = (
        (subsampling_model, subsampling_guide) if pair == "subsample-size" else (full_size_model, full_size_guide)
    )
    data = torch.randn(12, dtype=torch.float64) + 2.0
    elbo = None
    if method == "vae" and particles > 1:
        elbo = pyro.infer.Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    assert_same_objective(model, guide, data, method=method, num_particles=particles, elbo=elbo)


def test_a_subsampling_program_trains_on_the_whole_data_as_its_argument():
    data = torch.randn(40) + 3.0
    run = ppdgm.fit(
        subsampling_model, subsampling_guide, data, "vae", steps=300, batch_size=40, lr=0.05, progress=False
    )
    assert abs(pyro.param("mu_loc").item() - 3.0) < 0.6, pyro.param("mu_loc")
    assert run.history[-1]["train_elbo"] > run.history[0]["train_elbo"]

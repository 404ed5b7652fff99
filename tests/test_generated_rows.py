"""``fit(generated_rows=...)``: the sleep phases of a pair whose observations no data column holds as it is.

The exact check: a pair that observes a transformed column, or is called through ``arguments=``, trains under the
sleep-phase methods to the very parameters of the same pair written to observe its column directly.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

import ppdgm
from ppdgm.errors import UsageError
from ppdgm.programs.sites import ConventionError

DIM = 3


def linear_gaussian(observed, encoded, temperature=1.0):
    """z ~ N(0, I), x ~ N(z + w, temperature I); the observed site reads ``observed(column)``, the guide reads
    ``encoded(column)``."""

    def model(column, *rest):
        w = pyro.param("w", torch.zeros(DIM))
        with pyro.plate("data", column.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + w, rest[0] if rest else temperature).to_event(1), obs=observed(column))

    def guide(column, *rest):
        a = pyro.param("a", torch.full((DIM,), 0.5))
        b = pyro.param("b", torch.zeros(DIM))
        log_s = pyro.param("log_s", torch.zeros(DIM))
        with pyro.plate("data", column.shape[0]):
            pyro.sample("z", dist.Normal(a * encoded(column) + b, log_s.exp()).to_event(1))

    return model, guide


def direct():
    return linear_gaussian(lambda x: x, lambda x: x, temperature=2.0)


def doubled():
    """The same pair on a column holding 2x: the observed site reads a transformed copy of the column."""
    return linear_gaussian(lambda c: c / 2, lambda c: c / 2, temperature=2.0)


def trained(pair, data, method, **kwargs):
    pyro.clear_param_store()
    run = ppdgm.fit(*pair, data, method, steps=12, batch_size=10, seed=3, progress=False, lr=0.05, **kwargs)
    return values(run)


def values(run):
    with run.params():
        return {name: pyro.param(name).detach().clone() for name in ("w", "a", "b", "log_s")}


def data(n=40):
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(0)) + 1.0


@pytest.mark.parametrize("method", ["wake-sleep", "rws"])
def test_a_transformed_column_trains_as_the_column_itself(float64, method):
    x = data()
    reference = trained(direct(), x, method)

    def double_back(values, column):
        return values["x"] * 2

    same = trained(doubled(), 2 * x, method, generated_rows=double_back)
    for name, value in reference.items():
        assert torch.equal(same[name], value), name
    assert not torch.equal(reference["a"], torch.full((DIM,), 0.5))  # the sleep phase trained the guide


@pytest.mark.parametrize("method", ["wake-sleep", "rws"])
def test_a_pair_called_through_arguments_trains_as_written_directly(float64, method):
    x = data()
    reference = trained(direct(), x, method)

    def with_temperature(column):
        return column, 2.0

    def observations(values, column):
        return values["x"]

    model, guide = linear_gaussian(lambda c: c, lambda c: c)
    pyro.clear_param_store()
    run = ppdgm.fit(
        model, guide, x, method, steps=12, batch_size=10, seed=3, progress=False, lr=0.05,
        arguments=with_temperature, generated_rows=observations,
    )  # fmt: skip
    for name, value in values(run).items():
        assert torch.equal(value, reference[name]), name
    assert run.config["generated_rows"].endswith("<locals>.observations")


def test_rows_in_another_order_are_refused_before_training():
    """Rows that do not make the model observe the generated values (here: their order reversed) would pair each
    dreamt latent with another row's observation; the check before training names the site."""

    def reversed_rows(values, column):
        return values["x"].flip(0) * 2

    with pytest.raises(ConventionError, match=r"does not give the generated observations back.* site 'x'"):
        ppdgm.fit(*doubled(), 2 * data(), "ws", steps=1, progress=False, generated_rows=reversed_rows)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda values, column: (values["x"] * 2,), r"a tensor of 3 rows, got a tuple"),
        (lambda values, column: values["x"][:2] * 2, r"a tensor of 3 rows, got a tensor of shape \(2, 3\)"),
    ],
)
def test_a_hook_returning_another_layout_is_refused(returned, message):
    with pytest.raises(UsageError, match=rf"generated_rows='<lambda>' must return the batch's rows .*{message}"):
        ppdgm.fit(*doubled(), 2 * data(), "ws", steps=1, batch_size=40, progress=False, generated_rows=returned)


def test_a_hook_returning_columns_in_another_layout_is_refused():
    model, guide = doubled()

    def two_columns(column, extra):
        return model(column)

    def two_columns_guide(column, extra):
        return guide(column)

    x = 2 * data()
    with pytest.raises(UsageError, match=r"must return the batch's columns in the data's layout"):
        ppdgm.fit(
            two_columns, two_columns_guide, (x, x), "ws", steps=1, progress=False,
            generated_rows=lambda values, column, extra: (values["x"] * 2,),
        )  # fmt: skip
    ppdgm.fit(  # the same pair with its columns given back
        two_columns, two_columns_guide, (x, x), "ws", steps=1, progress=False,
        generated_rows=lambda values, column, extra: (values["x"] * 2, extra),
    )  # fmt: skip


@pytest.mark.parametrize("method", ["gan", "aavae"])
def test_methods_comparing_real_and_generated_columns_refuse_the_hook(method):
    with pytest.raises(ConventionError, match=r"generated_rows= serves the sleep phases \(wake-sleep, rws\) only"):
        ppdgm.fit(
            *doubled(), 2 * data(), method, steps=1, progress=False, generated_rows=lambda values, c: values["x"] * 2
        )


def test_without_the_hook_the_refusal_names_it():
    """A single tensor is no longer taken for the observation when the site reads a transformed copy of it."""
    with pytest.raises(ConventionError, match=r"observe no data column as it is .* or pass generated_rows="):
        ppdgm.fit(*doubled(), 2 * data(), "ws", steps=1, progress=False)
    with pytest.raises(ConventionError, match=r"the observed site 'x' reads no data column as it is"):
        ppdgm.fit(*doubled(), 2 * data(), "gan", steps=1, progress=False)
    run = ppdgm.fit(*doubled(), 2 * data(), "vae", steps=1, progress=False)  # the data side needs no tie
    draws = ppdgm.sample(run, 4)
    assert set(draws) == {"x"} and draws["x"].shape == (4, DIM)  # the site's draws, not rows of the column


def test_a_copy_of_the_column_is_tied_to_it(float64):
    """A site observing the column's values as a copy (here in float64 from float32 data) gets generated rows."""
    model, guide = linear_gaussian(lambda c: c.double(), lambda c: c.double(), temperature=2.0)
    run = ppdgm.fit(model, guide, data().float(), "ws", steps=2, progress=False)
    rows = ppdgm.sample(run, 4)
    assert torch.is_tensor(rows) and rows.shape == (4, DIM)

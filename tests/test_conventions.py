"""Bad input gets a clear error that names the site or field."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import ppdgm
from ppdgm.programs.pair import ConventionError, ProgramPair

from .test_training import user_pair


def fit(model, guide, data, **kwargs):
    return ppdgm.fit(model, guide, data, "vae", steps=1, progress=False, **kwargs)


def test_data_outside_bernoulli_support_names_the_site():
    model, guide = user_pair()
    with pytest.raises(ValueError, match=r"outside the support of the Bernoulli likelihood at site 'x'.*0 or 1"):
        fit(model, guide, "digits")  # grey levels in [0, 1], not binary


def test_nan_in_data_names_the_site_and_rows():
    model, guide = user_pair()
    x = ppdgm.data.load("digits-binary").train.clone()
    x[7, 3] = float("nan")
    with pytest.raises(ValueError, match=r"data for site 'x' contain NaN \(first rows: \[7\]\)"):
        fit(model, guide, x)


def test_guide_missing_a_latent_site_names_it():
    model, _ = user_pair()
    enc = nn.Linear(64, 4)

    def guide(x=None, batch_size=None):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("w", dist.Normal(enc(x), 1.0).to_event(1))

    with pytest.raises(ConventionError, match=r"no sample site for the model's latent site\(s\) \['z'\]"):
        fit(model, guide, "digits-binary")


def test_model_without_observed_site_is_refused():
    def model(x=None, batch_size=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([4]).to_event(1))

    _, guide = user_pair()
    with pytest.raises(ConventionError, match="the model has no observed site"):
        fit(model, guide, "digits-binary")


def test_observed_site_of_any_name_is_found_and_a_wrong_obs_site_is_named():
    def model(x=None, batch_size=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
            pyro.sample("image", dist.Bernoulli(logits=z.sum(-1, keepdim=True).expand(-1, 64)).to_event(1), obs=x)

    _, guide = user_pair()
    run = fit(model, guide, "digits-binary")
    assert run.programs.obs_site == "image" and run.config["obs_site"] == "image"
    with pytest.raises(ConventionError, match=r"obs_site='x' is not an observed site of the model.*\['image'\]"):
        fit(model, guide, "digits-binary", obs_site="x")


def test_program_whose_signature_cannot_take_the_batch_is_refused():
    def model():
        pass

    _, guide = user_pair()
    x = ppdgm.data.load("digits-binary").train[:5]
    with pytest.raises(
        ConventionError, match=r"the model cannot take the batch \(arg 0: \(5, 64\) float32\).*signature is model\(\)"
    ):
        ProgramPair(model, guide).inspect(x)


def test_observed_site_outside_a_data_plate_is_refused():
    dec = nn.Linear(4, 64)

    def model(x=None, batch_size=None):
        pyro.module("dec", dec)
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0], 4]).to_event(2))
        pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(2), obs=x)

    def guide(x=None, batch_size=None):
        pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0], 4]).to_event(2))

    with pytest.raises(ConventionError, match=r"'x' is in no plate of the batch size 100.*pyro.plate\('data'"):
        fit(model, guide, "digits-binary")


def test_unknown_method_lists_the_known_ones():
    model, guide = user_pair()
    known = ", ".join(sorted(ppdgm.available_methods()))
    assert known.startswith("aae, aavae, bigan, cd, cyclegan, gan")
    with pytest.raises(ValueError, match=f"unknown method 'wake-sleepy'; known methods: {known}"):
        ppdgm.fit(model, guide, "digits-binary", "wake-sleepy")


def test_bad_budget_and_method_options_are_named():
    model, guide = user_pair()
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        ppdgm.fit(model, guide, "digits-binary", "vae", epochs=0)
    with pytest.raises(ValueError, match="guide_gradient must be one of"):
        ppdgm.fit(model, guide, "digits-binary", "iwae", guide_gradient="dregs")
    with pytest.raises(ValueError, match="method 'vae' needs a guide"):
        ppdgm.fit(model, None, "digits-binary", "vae")
    with pytest.raises(ValueError, match="unknown data set 'emnist'; known:"):
        ppdgm.fit(model, guide, "emnist", "vae")


def test_dreg_refuses_non_reparameterised_latents():
    from .test_training import discrete_pair

    model, guide = discrete_pair()
    with pytest.raises(ValueError, match=r"sites \['z'\] are not"):
        ppdgm.fit(model, guide, "digits-binary", "iwae", guide_gradient="dreg", steps=1, progress=False)


def test_parameters_shared_by_model_and_guide_are_trained_once_by_vae_and_refused_by_separate_players():
    shared = nn.Linear(64, 4)

    def model(x=None, batch_size=None):
        pyro.module("net", shared)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z @ shared.weight).to_event(1), obs=x)

    def guide(x=None, batch_size=None):
        pyro.module("net", shared)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(shared(x), 1.0).to_event(1))

    with pytest.raises(ConventionError, match=r"parameters \['net\$\$\$bias', 'net\$\$\$weight'\] are used by both"):
        ppdgm.fit(model, guide, "digits-binary", "rws", steps=1, progress=False)
    run = ppdgm.fit(model, guide, "digits-binary", "vae", steps=2, progress=False)
    assert sorted(run.programs.structure.shared_param_names) == ["net$$$bias", "net$$$weight"]
    assert sorted(run.engine.players["model"].param_names) == ["net$$$bias", "net$$$weight"]
    assert "guide" not in run.engine.players  # one optimizer steps each parameter once


def test_log_prob_shapes_per_particle_and_datapoint_with_nested_plates():
    """A model with a pixel plate inside the data plate still gives (K, B) weights equal to a by-hand sum."""
    dec = nn.Linear(3, 6)

    def model(x=None, batch_size=None):
        pyro.module("dec", dec)
        n = x.shape[0] if x is not None else batch_size
        with pyro.plate("data", n, dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
            with pyro.plate("pixels", 6, dim=-1):
                pyro.sample("x", dist.Bernoulli(logits=dec(z).squeeze(-2)), obs=x)

    def guide(x=None, batch_size=None):
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal(0.5, 2.0).expand([1, 3]).to_event(1))

    x = (torch.rand(5, 6) > 0.5).float()
    programs = ProgramPair(model, guide)
    structure = programs.inspect(x)
    assert structure.max_plate_nesting == 2 and structure.data_plate == "data"
    side = programs.data_side(x, num_particles=4)
    assert side.log_p.shape == side.log_q.shape == (4, 5)
    z = side.guide_trace.nodes["z"]["value"]  # (4, 5, 1, 3)
    by_hand_q = dist.Normal(0.5, 2.0).log_prob(z).sum(-1).squeeze(-1)
    by_hand_p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1).squeeze(-1)
    by_hand_p = by_hand_p + dist.Bernoulli(logits=dec(z.squeeze(-2))).log_prob(x).sum(-1)
    assert torch.allclose(side.log_q, by_hand_q, atol=1e-5)
    assert torch.allclose(side.log_p, by_hand_p, atol=1e-5)


def test_model_side_and_sleep_scoring_of_the_guide(float64):
    from .helpers import linear_gaussian, poor_guide

    model, _, x = linear_gaussian(n=6)
    guide = poor_guide(model, 4, 2)
    programs = ProgramPair(model, guide)
    programs.inspect(x)
    dream = programs.model_side(batch_size=6)
    z, x_dream = dream.nodes["z"]["value"], dream.nodes["x"]["value"]
    assert z.shape[-2:] == (6, 2) and x_dream.shape[-2:] == (6, 4)
    _, log_q = programs.score_guide(dream)
    loc = guide.linear(x_dream.reshape(6, 4))
    scale = torch.nn.functional.softplus(guide.raw_scale)
    by_hand = dist.Normal(loc, scale).log_prob(z.reshape(6, 2)).sum(-1)
    assert log_q.shape == (1, 6)
    assert torch.allclose(log_q[0], by_hand)

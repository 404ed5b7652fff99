"""Training contract shared by every method: the same model/guide pair trains under each `method=`."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import ppdgm
from ppdgm import evaluate
from ppdgm.guides import GaussianMLPEncoder
from ppdgm.models import BernoulliMLPModel

METHODS = [
    ("vae", {}),
    ("elbo", {}),
    ("iwae", {"num_particles": 5}),
    ("iwae", {"num_particles": 5, "guide_gradient": "dreg"}),
    ("ws", {}),
    ("rws", {"num_particles": 5}),
]
IDS = ["vae", "elbo-alias", "iwae-k5", "iwae-k5-dreg", "ws", "rws-k5"]


def user_pair(x_dim=64, z_dim=4):
    """A model/guide pair written the way a user would, not taken from ppdgm.models."""
    decoder = nn.Sequential(nn.Linear(z_dim, 32), nn.Tanh(), nn.Linear(32, x_dim))
    encoder = nn.Sequential(nn.Linear(x_dim, 32), nn.Tanh(), nn.Linear(32, 2 * z_dim))

    def model(x=None, batch_size=None):
        pyro.module("decoder", decoder)
        n = x.shape[0] if x is not None else batch_size
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([z_dim]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x=None, batch_size=None):
        pyro.module("encoder", encoder)
        loc, raw = encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    return model, guide


def test_method_by_name_and_by_class_are_the_same_object():
    by_name = ppdgm.get_method("iwae", num_particles=50)
    direct = ppdgm.inference.IWAE(num_particles=50)
    assert type(by_name) is type(direct) and by_name.options() == direct.options()
    assert type(ppdgm.get_method("elbo")) is ppdgm.inference.VAE
    with pytest.raises(
        ValueError,
        match="known methods: " + ", ".join(sorted(ppdgm.available_methods())),
    ):
        ppdgm.get_method("gann")
    with pytest.raises(TypeError, match="bad options for method 'iwae'"):
        ppdgm.get_method("iwae", num_particle=3)


@pytest.mark.parametrize(("method", "options"), METHODS, ids=IDS)
def test_user_written_pair_trains_under_every_method(method, options):
    data = ppdgm.data.load("digits-binary")
    model, guide = user_pair()
    before = evaluate.log_likelihood(model, guide, data.test, num_samples=50).mean
    run = ppdgm.fit(model, guide, data, method, epochs=8, lr=3e-3, progress=False, **options)
    after = evaluate.log_likelihood(model, guide, data.test, num_samples=50).mean
    assert after > before + 5, (before, after)
    assert len(run.history) == 8 and run.history[-1]["step"] == 8 * 13
    valid_key = [k for k in run.history[-1] if k.startswith("valid_")]
    assert len(valid_key) == 1 and math.isfinite(run.history[-1][valid_key[0]])


@pytest.mark.parametrize("method", ["vae", "iwae"])
def test_training_raises_held_out_log_likelihood_clearly(method):
    data = ppdgm.data.load("digits-binary")
    model = BernoulliMLPModel(data.dim, 10, (128,))
    guide = GaussianMLPEncoder(data.dim, 10, (128,))
    initial = evaluate.log_likelihood(model, guide, data.test, num_samples=100)
    ppdgm.fit(model, guide, data, method, steps=400, lr=3e-3, progress=False)
    trained = evaluate.log_likelihood(model, guide, data.test, num_samples=100)
    assert trained.mean > initial.mean + 15, (initial, trained)
    assert trained.mean > -30


def discrete_pair(x_dim=64, z_dim=8):
    decoder = nn.Linear(z_dim, x_dim)
    encoder = nn.Linear(x_dim, z_dim)
    prior_logits = nn.Parameter(torch.zeros(z_dim))

    def model(x=None, batch_size=None):
        pyro.module("decoder", decoder)
        pyro.param("prior_logits", prior_logits)
        with pyro.plate("data", x.shape[0] if x is not None else batch_size):
            z = pyro.sample("z", dist.Bernoulli(logits=prior_logits).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x=None, batch_size=None):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=encoder(x)).to_event(1))

    return model, guide


@pytest.mark.parametrize(("method", "options"), [("vae", {}), ("iwae", {"num_particles": 5})], ids=["nvil", "vimco"])
def test_discrete_latents_train_with_score_function_gradients(method, options):
    data = ppdgm.data.load("digits-binary")
    model, guide = discrete_pair()
    before = evaluate.log_likelihood(model, guide, data.test, num_samples=100).mean
    ppdgm.fit(model, guide, data, method, epochs=15, lr=1e-2, progress=False, **options)
    after = evaluate.log_likelihood(model, guide, data.test, num_samples=100).mean
    assert after > before + 5, (before, after)


def _strip_times(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def _fresh_run(**kwargs):
    torch.manual_seed(123)  # identical initial networks
    model = BernoulliMLPModel(64, 5, (32,))
    guide = GaussianMLPEncoder(64, 5, (32,))
    run = ppdgm.fit(model, guide, "digits-binary", "iwae", num_particles=3, progress=False, seed=7, **kwargs)
    params = [p.detach().clone() for p in list(model.parameters()) + list(guide.parameters())]
    return run, params


def test_same_seed_gives_bit_identical_history_and_parameters():
    run_a, params_a = _fresh_run(epochs=3)
    run_b, params_b = _fresh_run(epochs=3)
    assert _strip_times(run_a.history) == _strip_times(run_b.history)
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
    run_c, _ = _fresh_run(epochs=3, batch_size=50)
    assert _strip_times(run_c.history) != _strip_times(run_a.history)


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    uninterrupted, params_full = _fresh_run(epochs=3, checkpoint_dir=tmp_path / "full")

    def kill_after_first_epoch(run, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fresh_run(epochs=3, checkpoint_dir=tmp_path / "resumed", callbacks=[kill_after_first_epoch])
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    resumed, params_resumed = _fresh_run(epochs=3, checkpoint_dir=tmp_path / "resumed")
    assert _strip_times(resumed.history) == _strip_times(uninterrupted.history)
    assert all(torch.equal(a, b) for a, b in zip(params_full, params_resumed))
    assert not list((tmp_path / "resumed").glob("*.tmp"))


def test_resume_refuses_a_checkpoint_of_another_method(tmp_path):
    _fresh_run(epochs=1, checkpoint_dir=tmp_path)
    model, guide = BernoulliMLPModel(64, 5, (32,)), GaussianMLPEncoder(64, 5, (32,))
    with pytest.raises(ValueError, match=r"belongs to another run \(method: 'iwae' -> 'vae'"):
        ppdgm.fit(model, guide, "digits-binary", "vae", epochs=2, checkpoint_dir=tmp_path, progress=False, seed=7)


def test_players_have_their_own_optimizers_and_runs_do_not_share_parameters():
    data = ppdgm.data.load("digits-binary")
    model_a, guide_a = user_pair()
    model_b, guide_b = user_pair()  # same pyro.module names as the first pair
    run_a = ppdgm.fit(model_a, guide_a, data, "vae", steps=3, progress=False, lr={"model": 1e-3, "guide": 5e-3})
    run_b = ppdgm.fit(model_b, guide_b, data, "vae", steps=3, progress=False)
    assert set(run_a.engine.players) == {"model", "guide"}
    assert run_a.engine.players["guide"].optimizer.param_groups[0]["lr"] == 5e-3
    model_params = {id(p) for p in run_a.engine.players["model"].params}
    assert all(id(p) not in model_params for p in run_a.engine.players["guide"].params)
    ids_a = {id(p) for player in run_a.engine.players.values() for p in player.params}
    ids_b = {id(p) for player in run_b.engine.players.values() for p in player.params}
    assert not ids_a & ids_b  # the second run trained its own modules, not the first run's


def test_run_save_and_load_params_round_trip(tmp_path):
    data = ppdgm.data.load("digits-binary")
    model, guide = BernoulliMLPModel(64, 5, (32,)), GaussianMLPEncoder(64, 5, (32,))
    run = ppdgm.fit(model, guide, data, "vae", steps=20, progress=False)
    run.save(tmp_path / "params.pt")
    fresh_model, fresh_guide = BernoulliMLPModel(64, 5, (32,)), GaussianMLPEncoder(64, 5, (32,))
    pyro.clear_param_store()
    ppdgm.load_params(tmp_path / "params.pt", ppdgm.ProgramPair(fresh_model, fresh_guide), data.train[:10])
    for a, b in zip(
        list(model.parameters()) + list(guide.parameters()),
        list(fresh_model.parameters()) + list(fresh_guide.parameters()),
    ):
        assert torch.equal(a, b)


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    model, guide = user_pair()
    with pytest.raises(RuntimeError, match="no CUDA GPU is available"):
        ppdgm.fit(model, guide, "digits-binary", "vae", steps=1, device="cuda", progress=False)


def _pyro_module_pair(guide_attribute: str = "enc"):
    from pyro.nn import PyroModule

    class Decoder(PyroModule):
        def __init__(self):
            super().__init__()
            self.net = PyroModule[nn.Linear](4, 64)

        def forward(self, x=None, batch_size=None):
            with pyro.plate("data", x.shape[0] if x is not None else batch_size):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
                return pyro.sample("x", dist.Bernoulli(logits=self.net(z)).to_event(1), obs=x)

    class Encoder(PyroModule):
        def __init__(self):
            super().__init__()
            setattr(self, guide_attribute, PyroModule[nn.Linear](64, 8))

        def forward(self, x=None, batch_size=None):
            loc, raw = getattr(self, guide_attribute)(x).chunk(2, -1)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    return Decoder(), Encoder()


@pytest.mark.parametrize("method", ["vae", "iwae"])
def test_pyro_module_programs_train(method):
    data = ppdgm.data.load("digits-binary")
    model, guide = _pyro_module_pair()
    before = evaluate.log_likelihood(model, guide, data.test, num_samples=50).mean
    run = ppdgm.fit(model, guide, data, method, epochs=5, lr=1e-2, progress=False)
    assert run.engine.players["model"].param_names == ("net.weight", "net.bias")
    after = evaluate.log_likelihood(model, guide, data.test, num_samples=50).mean
    assert after > before + 5, (before, after)


def test_pyro_modules_with_clashing_names_are_refused_with_a_hint():
    model, guide = _pyro_module_pair(guide_attribute="net")
    with pytest.raises(ppdgm.ConventionError, match="for a PyroModule its attribute names"):
        ppdgm.fit(model, guide, "digits-binary", "ws", steps=1, progress=False)


def test_burda_schedule_sets_each_players_learning_rate_per_epoch():
    from ppdgm.training.schedules import burda2016_schedule

    assert [burda2016_schedule(e) for e in (0, 1, 3, 4, 12, 13, 1092, 1093, 3279, 10_000)] == pytest.approx(
        [1, 10 ** (-1 / 7), 10 ** (-1 / 7), 10 ** (-2 / 7), 10 ** (-2 / 7), 10 ** (-3 / 7), 10 ** (-6 / 7)]
        + [10 ** (-7 / 7)] * 3
    )
    seen = []

    def record_lr(run, record):
        seen.append({name: p.optimizer.param_groups[0]["lr"] for name, p in run.engine.players.items()})

    model, guide = user_pair()
    ppdgm.fit(
        model,
        guide,
        "digits-binary",
        "vae",
        epochs=5,
        lr={"model": 1e-3, "guide": 2e-3},
        lr_schedule="burda2016",
        callbacks=[record_lr],
        progress=False,
    )
    factors = [burda2016_schedule(e) for e in range(5)]
    assert [s["model"] for s in seen] == pytest.approx([1e-3 * f for f in factors])
    assert [s["guide"] for s in seen] == pytest.approx([2e-3 * f for f in factors])
    with pytest.raises(ValueError, match="unknown lr_schedule 'cosine'"):
        ppdgm.fit(model, guide, "digits-binary", "vae", epochs=1, lr_schedule="cosine")


def test_linear_schedule_decays_to_zero_over_the_run():
    seen = []

    def record_lr(run, record):
        seen.append(run.engine.players["model"].optimizer.param_groups[0]["lr"])

    model, guide = user_pair()
    ppdgm.fit(
        model,
        guide,
        "digits-binary",
        "vae",
        epochs=4,
        lr=1e-3,
        lr_schedule="linear",
        callbacks=[record_lr],
        progress=False,
        validate_every=0,
    )
    assert seen == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
    with pytest.raises(ValueError, match="unknown lr_schedule 'cosine'; known: \\['burda2016', 'linear'\\]"):
        ppdgm.fit(model, guide, "digits-binary", "vae", epochs=1, lr_schedule="cosine", progress=False)


def test_named_optimizers_take_the_fused_kernels_and_fused_false_restores_foreach():
    """Adam, AdamW and SGD run torch's fused kernels by default (one kernel a step for all parameters), recorded in the
    run's config; fused=False gives the multi-tensor kernels; RMSprop has no fused kernel; reruns are bit-identical."""
    data = ppdgm.data.load("digits-binary").train[:200]

    def fit(**options):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide = user_pair()
        run = ppdgm.fit(model, guide, data, "vae", steps=5, batch_size=50, progress=False, **options)
        return run, [p.detach().clone() for player in run.engine.players.values() for p in player.params]

    fused, fused_params = fit()
    assert fused.config["optimizers"] == {"model": "fused", "guide": "fused"}
    _, again = fit()
    assert all(torch.equal(a, b) for a, b in zip(fused_params, again))
    foreach, foreach_params = fit(optimizer_options={"fused": False})
    assert foreach.config["optimizers"] == {"model": "foreach", "guide": "foreach"}
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fused_params, foreach_params))  # the same algorithm
    assert fit(optimizer="sgd")[0].config["optimizers"]["model"] == "fused"
    assert fit(optimizer="rmsprop")[0].config["optimizers"]["model"] == "foreach"

"""Compiled steps (ppdgm.compile): a step replayed from its recording gives the eager step's parameters, bit for bit
on the CPU; programs a recording cannot replay fall back to the eager step with one warning that names the cause."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import ppdgm
from ppdgm.compile.failures import CompileError, CompileWarning
from ppdgm.compile.state import RTOL
from ppdgm.compile.step import CompiledStep
from ppdgm.guides import GaussianMLPEncoder, SBNRecognition
from ppdgm.models import BernoulliMLPModel, SemiSupervisedVAE, SigmoidBeliefNet

from .test_hot_loop import method_pair
from .test_training import user_pair

STEPS = 50


def _params(run) -> list[torch.Tensor]:
    return [p.detach().clone() for player in run.engine.players.values() for p in player.params]


def _fit_both(model_guide, data, method, steps=STEPS, compiled=True, **options):
    """The same fit eager and compiled from the same seed: (eager run, eager params, compiled run, compiled params)."""
    runs = []
    options.update(steps=steps, progress=False, validate_every=0)
    for compile in (False, compiled):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model, guide = model_guide()
        run = ppdgm.fit(model, guide, data, method, compile=compile, **options)
        runs += [run, _params(run)]
    return runs


def _assert_same(eager: list[torch.Tensor], compiled: list[torch.Tensor]) -> None:
    assert len(eager) == len(compiled)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=1e-6)


def _sbn_pair():
    return SigmoidBeliefNet(64, (8,)), SBNRecognition(64, (8,), (16,))


def _m2_pair():
    m2 = SemiSupervisedVAE(64, 10)
    return m2.model, m2.guide


def _m2_columns():
    data = ppdgm.data.load("digits-binary")
    labels = data.labels["train"]
    labelled = ppdgm.data.labelled_subset(labels, 10)
    return data.train, F.one_hot(torch.where(labelled, labels, 0), 10).float(), labelled


CASES = {
    **{m: (m, {}) for m in sorted(ppdgm.available_methods())},
    "vae-nvil": ("vae", {"program": _sbn_pair}),
    "iwae-vimco": ("iwae", {"program": _sbn_pair, "num_particles": 4}),
    "iwae-dreg": ("iwae", {"guide_gradient": "dreg", "num_particles": 4}),
    "iwae-k50": ("iwae", {"num_particles": 50}),
    "wgan-gp-5-critic-steps": ("wgan-gp", {"discriminator_steps": 5}),
    "m2-enumerated-labels": ("vae", {"program": _m2_pair}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_compiled_fit_gives_the_eager_parameters(case):
    method, options = CASES[case]
    options = dict(options)
    _, _, data, extra = method_pair(method)
    pair = options.pop("program", None) or (lambda: method_pair(method)[:2])
    if case.startswith("m2"):
        data = _m2_columns()
    eager, eager_params, compiled, compiled_params = _fit_both(pair, data, method, batch_size=16, **extra, **options)
    assert eager.config["step_path"]["path"] == "eager"
    described = compiled.config["step_path"]
    assert described["path"] == "compiled" and described["fallback"] is None, described
    # the first step runs eagerly (with Pyro's checks); each recording is checked on first use and re-checked on its
    # first replay, and the recording's step is the real one after both checks
    assert described["rechecks"] == 2 * described["traces"], described
    assert described["compiled_steps"] == STEPS - 1, described
    _assert_same(eager_params, compiled_params)
    for key in eager.history[-1]:
        if key.startswith("train_"):
            assert compiled.history[-1][key] == pytest.approx(eager.history[-1][key], rel=1e-5, abs=1e-6), key


def test_replays_draw_fresh_noise():
    """A recording holds random operations, not the numbers of the traced step: two replays on one batch differ."""
    model, guide = user_pair()
    x = ppdgm.data.load("digits-binary").train[:32]
    run = ppdgm.fit(model, guide, x, "vae", steps=1, batch_size=32, progress=False, validate_every=0)
    step = CompiledStep(run.method, run.engine, compile=True, eager_steps=0)
    with run.params(), pyro.validation_enabled(False):
        step(x), step(x)  # recorded and checked; the first replay re-checked
        first, second = step(x)["elbo"], step(x)["elbo"]
    assert step.traces == 1 and step.compiled_steps == 4 and step.rechecks == 2
    assert first != second


def test_the_last_partial_batch_and_another_k_are_traced_anew():
    data = ppdgm.data.load("digits-binary").train[:70]  # batches of 32, 32 and 6
    eager, eager_params, compiled, compiled_params = _fit_both(
        user_pair, data, "iwae", steps=9, batch_size=32, num_particles=3
    )
    assert compiled.config["step_path"]["traces"] == 2  # the full batch and the partial one
    _assert_same(eager_params, compiled_params)

    model, guide = user_pair()
    run = ppdgm.fit(model, guide, data, "iwae", steps=1, batch_size=32, progress=False, validate_every=0)
    step = CompiledStep(run.method, run.engine, compile=True, eager_steps=0)
    with run.params(), pyro.validation_enabled(False):
        step(data[:32])
        run.method.num_particles = 7
        bound_k7 = step(data[:32])["iwae_bound"]
    assert step.traces == 2
    assert torch.isfinite(bound_k7)


def test_a_fit_resumed_from_a_checkpoint_continues_on_the_compiled_path(tmp_path):
    data = ppdgm.data.load("digits-binary").train[:320]
    _, eager_params, uninterrupted, _ = _fit_both(user_pair, data, "vae", steps=40, batch_size=32)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = user_pair()
    common = dict(batch_size=32, progress=False, validate_every=0, checkpoint_dir=tmp_path)
    ppdgm.fit(model, guide, data, "vae", steps=20, **common)
    pyro.clear_param_store()
    model, guide = user_pair()
    resumed = ppdgm.fit(model, guide, data, "vae", steps=40, **common)
    assert resumed.config["step_path"]["path"] == "compiled"
    # every step of the resumed process runs from a recording, as the uninterrupted run's steps 21 to 40 do
    assert resumed.config["step_path"]["compiled_steps"] == 20
    _assert_same(eager_params, _params(resumed))


# ---------------------------------------------------------------- fallbacks
def _branching_model():
    model, guide = user_pair()

    def branching(x=None, batch_size=None):
        model(x, batch_size)
        if x.mean() > 0.2:  # data-dependent control flow: a recording would keep one branch
            pyro.factor("dense", -x.sum(-1).mean())

    return branching, guide


def _host_reading_model():
    decoder = nn.Linear(4, 64)
    _, guide = user_pair()

    def reading(x=None, batch_size=None):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
            spread = float(z.detach().abs().max())  # a host read: a recording would keep one number
            pyro.sample("x", dist.Bernoulli(logits=decoder(z) / spread).to_event(1), obs=x)

    return reading, guide


@pytest.mark.parametrize(
    ("program", "line"),
    [(_branching_model, "if x.mean() > 0.2:"), (_host_reading_model, "spread = float(z.detach().abs().max())")],
    ids=["data-dependent-branch", "host-read"],
)
def test_an_uncompilable_program_warns_once_and_trains_as_eagerly(program, line):
    data = ppdgm.data.load("digits-binary").train[:320]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eager, eager_params, fallen_back, fallback_params = _fit_both(
            program, data, "vae", steps=30, batch_size=32, compiled="auto"
        )
    messages = [str(w.message) for w in caught if issubclass(w.category, CompileWarning)]
    assert len(messages) == 1, messages
    assert "runs the 'vae' step eagerly" in messages[0] and "reads a tensor on the host" in messages[0]
    assert "test_compiled.py:" in messages[0] and line in messages[0]
    assert fallen_back.config["step_path"]["path"] == "eager"
    assert line in fallen_back.config["step_path"]["fallback"]
    _assert_same(eager_params, fallback_params)


def test_python_state_in_a_program_is_caught_by_the_first_re_check():
    model, guide = user_pair()
    calls = [0]

    def counting(x=None, batch_size=None):
        calls[0] += 1  # the program changes with each call: a recording would keep the traced call's factor
        model(x, batch_size)
        pyro.factor("schedule", torch.tensor(-1.0 * calls[0]))

    data = ppdgm.data.load("digits-binary").train[:64]
    with pytest.warns(CompileWarning, match="the recorded step disagrees with the eager step: metric 'elbo' differs"):
        run = ppdgm.fit(counting, guide, data, "vae", steps=4, batch_size=32, progress=False, validate_every=0)
    assert run.config["step_path"]["path"] == "eager"


def test_compile_true_raises_where_auto_falls_back():
    branching, guide = _branching_model()
    data = ppdgm.data.load("digits-binary").train[:64]
    with pytest.raises(CompileError, match="cannot be compiled: the step reads a tensor on the host"):
        ppdgm.fit(branching, guide, data, "vae", steps=3, batch_size=32, progress=False, compile=True)
    with pytest.raises(ValueError, match="compile must be 'auto', True or False, got 'yes'"):
        ppdgm.fit(branching, guide, data, "vae", steps=3, progress=False, compile="yes")


# ---------------------------------------------------------------- CUDA graphs
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_CASES = ["vae", "vae-nvil", "iwae", "iwae-dreg", "iwae-vimco", "ws", "rws", "gan", "wgan-gp", "bigan", "aae"]


@GPU
@pytest.mark.parametrize("case", GPU_CASES)
def test_cuda_graph_steps_give_the_eager_parameters(case):
    """Sleep phases (ws, rws), the reversed discriminator (gan, bigan, aae), a gradient penalty (wgan-gp), NVIL,
    VIMCO and DReG inside the captured step: 50 steps captured against 50 eager steps on the GPU."""
    method, options = CASES[case]
    options = dict(options)
    _, _, data, extra = method_pair(method)
    pair = options.pop("program", None) or (lambda: method_pair(method)[:2])

    def on_gpu():
        return [m.cuda() if isinstance(m, nn.Module) else m for m in pair()]

    eager, eager_params, captured, captured_params = _fit_both(
        on_gpu, data, method, batch_size=16, device="cuda", **extra, **options
    )
    described = captured.config["step_path"]
    assert described["path"] == "cuda-graph", described
    assert described["cuda_graph_steps"] >= STEPS // 2  # not: the first step, checks, warm-ups before captures
    # float32 on a GPU: the captured kernels may differ from the eager ones in rounding only
    for a, b in zip(eager_params, captured_params):
        torch.testing.assert_close(b.cpu(), a.cpu(), rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- evaluation
@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=GPU)],
)
def test_the_recorded_log_likelihood_is_the_eager_one(device):
    """Chunks of 37 particles (and a last one of 26) per batch of 20: two recordings, each replayed per batch."""
    model, guide = BernoulliMLPModel(64, 4, (16,)).to(device), GaussianMLPEncoder(64, 4, (16,)).to(device)
    x = ppdgm.data.load("digits-binary").test[:60].to(device)
    estimates = []
    for compile in (False, True):
        pyro.set_rng_seed(1)
        estimates.append(
            ppdgm.evaluate.log_likelihood(
                model, guide, x, 100, batch_size=20, max_elements=37 * 20 * 64, compile=compile
            )
        )
    tolerance = {"rtol": 0, "atol": 0} if device == "cpu" else {"rtol": 1e-5, "atol": 1e-4}
    torch.testing.assert_close(estimates[1].values, estimates[0].values, **tolerance)


def test_a_recorded_function_keys_on_shapes_and_plain_arguments():
    calls = []

    def noisy_sum(x, k):
        calls.append(k)
        return (x.unsqueeze(0) + torch.randn(k, *x.shape)).sum(0)

    recorded = ppdgm.compile.function.RecordedFunction(noisy_sum, "a test function")
    x = torch.zeros(4, 3)
    pyro.set_rng_seed(0)
    values = [recorded(x, 5), recorded(x, 5), recorded(x, 2), recorded(x[:2], 5)]
    assert len(recorded.entries) == 3
    assert calls == [5, 5, 2, 2, 5, 5]  # per new key: traced once and run once eagerly for the check
    pyro.set_rng_seed(0)
    eager = [noisy_sum(x, 5), noisy_sum(x, 5), noisy_sum(x, 2), noisy_sum(x[:2], 5)]
    for a, b in zip(values, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

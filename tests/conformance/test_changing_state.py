"""What changes while a fit runs — per-step arguments, parameters created late, Python state a program reads — is
computed on the compiled path as on the eager one, or caught by the re-check and run eagerly."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

import ppdgm
from ppdgm.compile.failures import CompileError, CompileWarning
from ppdgm.compile.step import CompiledStep


class Annealed(nn.Module):
    """Pyro's DMM anneals the KL term: ``poutine.scale(scale=annealing_factor)`` around the latents of both programs,
    the factor passed to ``svi.step`` beside the batch."""

    def __init__(self, x_dim=64, z_dim=4):
        super().__init__()
        self.z_dim = z_dim
        self.decoder = nn.Linear(z_dim, x_dim)
        self.encoder = nn.Linear(x_dim, 2 * z_dim)

    def model(self, x, annealing_factor=1.0):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=annealing_factor):
                z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, annealing_factor=1.0):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.encoder(x).chunk(2, -1)
            with poutine.scale(scale=annealing_factor):
                pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))


def _digits(rows=64):
    return ppdgm.data.load("digits-binary").train[:rows]


def _params(run):
    return {
        n: p.detach().clone()
        for player in run.engine.players.values()
        for n, p in zip(player.param_names, player.params)
    }


def _assert_close(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-6), (name, (a[name] - b[name]).abs().max())


def _annealed_fit(compile):
    pyro.set_rng_seed(0)
    pair = Annealed()
    schedule = {"annealing_factor": lambda step, epoch: 0.1 if step < 20 else 1.0}
    run = ppdgm.fit(
        pair.model, pair.guide, _digits(), "vae", steps=100, batch_size=16, lr=1e-2, progress=False,
        validate_every=0, compile=compile, step_kwargs=schedule,
    )  # fmt: skip
    return run


def test_a_per_step_annealing_factor_is_fed_to_the_recording_and_equals_the_eager_fit():
    eager, compiled = _annealed_fit(False), _annealed_fit(True)
    path = compiled.config["step_path"]
    assert path["path"] == "compiled" and path["traces"] == 1 and path["compiled_steps"] >= 90, path
    assert compiled.config["step_kwargs"]["annealing_factor"].startswith("<function")
    _assert_close(_params(eager), _params(compiled))


def test_the_annealing_factor_changes_the_objective():
    """Not a test that cannot fail: a fit whose factor never changes ends elsewhere."""
    pyro.set_rng_seed(0)
    pair = Annealed()
    constant = ppdgm.fit(
        pair.model, pair.guide, _digits(), "vae", steps=100, batch_size=16, lr=1e-2, progress=False,
        validate_every=0, step_kwargs={"annealing_factor": 0.1},
    )  # fmt: skip
    changing = _params(_annealed_fit(True))
    assert not torch.allclose(_params(constant)["decoder$$$weight"], changing["decoder$$$weight"], atol=1e-3)


class LateParameter(nn.Module):
    """The guide creates a ``pyro.param`` only once a flag is raised (after the first epoch of two steps)."""

    def __init__(self):
        super().__init__()
        self.late = False
        self.pair = Annealed()

    def model(self, x):
        self.pair.model(x)

    def guide(self, x):
        if self.late:
            shift = pyro.param("late_shift", x.new_zeros(self.pair.z_dim))
            pyro.module("encoder", self.pair.encoder)
            with pyro.plate("data", x.shape[0]):
                loc, raw = self.pair.encoder(x).chunk(2, -1)
                pyro.sample("z", dist.Normal(loc + shift, nn.functional.softplus(raw)).to_event(1))
        else:
            self.pair.guide(x)


def _late_fit(compile):
    pyro.set_rng_seed(0)
    pair = LateParameter()

    def raise_flag(run, record):
        pair.late = True

    run = ppdgm.fit(
        pair.model, pair.guide, _digits(32), "vae", steps=100, batch_size=16, lr=1e-2, progress=False,
        validate_every=0, compile=compile, callbacks=[raise_flag],
    )  # fmt: skip
    return run


def test_a_parameter_created_at_step_three_is_created_and_trained_on_every_path():
    eager = _late_fit(False)
    with pytest.warns(CompileWarning, match=r"created parameter\(s\) \['late_shift'\]"):
        compiled = _late_fit("auto")
    for run in (eager, compiled):
        assert "late_shift" in run.engine.players["guide"].param_names
        assert run.engine.players["guide"].params[-1].abs().sum() > 0.01  # it moved from zeros: it was trained
    _assert_close(_params(eager), _params(compiled))
    with pytest.raises(CompileError, match="late_shift"):
        _late_fit(True)


SCALE = {"value": 1.0}


def scaled_model(x):
    """Reads a global schedule: a recording bakes the value it saw in."""
    with pyro.plate("data", x.shape[0]), poutine.scale(scale=SCALE["value"]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(3), 1.0).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=z.sum(-1, keepdim=True).expand(*z.shape[:-1], 64)).to_event(1), obs=x)


def scaled_guide(x):
    loc = pyro.param("loc", x.new_zeros(3))
    with pyro.plate("data", x.shape[0]), poutine.scale(scale=SCALE["value"]):
        pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))


@pytest.mark.parametrize("compile", ["auto", True])
def test_the_periodic_recheck_catches_a_global_schedule_changed_after_first_use(compile):
    x = _digits(32)
    SCALE["value"] = 1.0
    run = ppdgm.fit(scaled_model, scaled_guide, x, "vae", steps=1, batch_size=32, progress=False, validate_every=0)
    step = CompiledStep(run.method, run.engine, compile=compile, eager_steps=0, recheck_every=4)
    with run.params(), pyro.validation_enabled(False):
        for _ in range(6):  # recorded, checked, re-checked, replayed
            step(x)
        assert step.fallback is None and step.compiled_steps >= 4
        SCALE["value"] = 0.5
        if compile is True:
            with pytest.raises(CompileError, match="disagrees with the eager step"):
                for _ in range(4):
                    step(x)
        else:
            with pytest.warns(CompileWarning, match="disagrees with the eager step"):
                for _ in range(4):
                    step(x)
            assert step.path == "eager" and "disagrees" in step.fallback
    SCALE["value"] = 1.0


def test_a_run_with_a_late_parameter_resumes_from_its_checkpoint(tmp_path):
    """The checkpoint records how to create the late parameter again; the resumed fit equals the uninterrupted one."""

    def fit(pair, steps, folder):
        def raise_flag(run, record):
            pair.late = True

        return ppdgm.fit(
            pair.model, pair.guide, _digits(32), "vae", steps=steps, batch_size=16, lr=1e-2, progress=False,
            validate_every=0, compile=False, callbacks=[raise_flag], checkpoint_dir=folder,
        )  # fmt: skip

    pyro.set_rng_seed(0)
    pair = LateParameter()
    whole = _params(fit(pair, 12, tmp_path / "whole"))
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pair = LateParameter()
    fit(pair, 6, tmp_path / "cut")
    pyro.clear_param_store()
    with torch.no_grad():  # a new process: other initial weights, no late parameter yet; the program's flag restored
        for p in pair.parameters():
            p.add_(1.0)
    pair.late = True
    resumed = fit(pair, 12, tmp_path / "cut")
    assert "late_shift" in resumed.engine.players["guide"].param_names
    _assert_close(whole, _params(resumed))

"""Checkpoints are plain data, checksummed and verified; resume is honest about what changed."""

import os
import pickle
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

import ppdgm
from ppdgm.cli.main import main
from ppdgm.data.streams import digest_rows, digest_rows_v1
from ppdgm.programs.batch import Batch
from ppdgm.runtime import storage
from ppdgm.runtime.storage import CheckpointError

from .test_training import user_pair


class _Payload:
    """Unpickling this runs a command: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fit(tmp_path, **options):
    model, guide = user_pair()
    options = {"epochs": 2, "lr": 1e-3, "progress": False, "seed": 0, **options}
    return ppdgm.fit(model, guide, "digits-binary", "vae", checkpoint_dir=tmp_path, **options)


@pytest.mark.parametrize("name", ["checkpoint.pt", "params.pt"])
def test_a_crafted_pickle_is_refused_and_never_run(tmp_path, name):
    marker = tmp_path / "ran"
    path = tmp_path / name
    with open(path, "wb") as f:
        pickle.dump({"epoch": 1, "payload": _Payload(marker)}, f)
    with pytest.raises(CheckpointError, match=rf"{name} is damaged or not a ppdgm file, and was not run"):
        if name == "checkpoint.pt":
            _fit(tmp_path)
        else:
            model, guide = user_pair()
            ppdgm.load_params(path, ppdgm.ProgramPair(model, guide), ppdgm.data.load("digits-binary").train[:5])
    assert not marker.exists()


def test_a_flipped_byte_in_a_parameter_is_detected(tmp_path):
    run = _fit(tmp_path)
    checkpoint = tmp_path / "checkpoint.pt"
    raw = bytearray(checkpoint.read_bytes())
    weights = run.engine.players["model"].params[0].detach().cpu().contiguous().numpy().tobytes()
    at = raw.find(weights[:64])
    assert at > 0
    raw[at + 10] ^= 0xFF
    checkpoint.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt is damaged: its content does not match its checksum"):
        _fit(tmp_path, epochs=3)


def test_resume_refuses_changed_settings_and_an_override_applies_them(tmp_path):
    _fit(tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match=r"other training settings \(lr: 0\.001 -> 0\.01\).*resume='override'"):
        _fit(tmp_path, lr=1e-2)
    run = _fit(tmp_path, lr=1e-2, resume="override")
    assert run.config["lr"] == 1e-2 and len(run.history) == 2
    assert all(g["lr"] == 1e-2 for p in run.engine.players.values() for g in p.optimizer.param_groups)


def test_a_shorter_budget_is_refused_and_a_longer_one_resumes(tmp_path):
    _fit(tmp_path, epochs=2)
    with pytest.raises(CheckpointError, match=r"steps: 26 -> 13"):
        _fit(tmp_path, epochs=1)
    assert len(_fit(tmp_path, epochs=3).history) == 3


def test_changed_optimizer_options_apply_with_an_override(tmp_path):
    _fit(tmp_path, epochs=1, optimizer_options={"betas": (0.9, 0.999)})
    run = _fit(tmp_path, optimizer_options={"betas": (0.5, 0.999)}, resume="override")
    assert all(g["betas"] == (0.5, 0.999) for p in run.engine.players.values() for g in p.optimizer.param_groups)


def test_the_cli_refuses_a_damaged_checkpoint_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--steps", "3", "--hidden", "8", "--z-dim", "2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main([*args[:2], "6", *args[3:]]) == 2
    assert "checkpoint.pt is damaged or not a ppdgm file" in capsys.readouterr().err


def test_unknown_resume_values_are_refused():
    model, guide = user_pair()
    with pytest.raises(ValueError, match="resume must be True, False or 'override'"):
        ppdgm.fit(model, guide, "digits-binary", "vae", resume="yes")


def test_checkpoint_files_load_as_plain_data(tmp_path):
    _fit(tmp_path, epochs=1)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["checksum"]) == 64


def test_divergence_stops_with_a_diagnosis_and_the_last_finite_checkpoint_stays(tmp_path):
    from ppdgm.runtime import storage as checkpoints

    _fit(tmp_path, epochs=1, optimizer="sgd")
    with pytest.raises(ppdgm.TrainingDiverged) as err:
        _fit(tmp_path, epochs=3, optimizer="sgd", lr=1e3, resume="override")
    message = str(err.value)
    assert message.startswith("training diverged (steps 14 to ") and "non-finite elbo" in message, message
    assert "non-finite parameters of player(s) ['model', 'guide']" in message
    assert "first non-finite log-density at site 'z' of the guide" in message
    assert f"The checkpoint in {tmp_path} holds the last finite epoch" in message
    state = checkpoints.load(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(bool(torch.isfinite(p).all()) for player in state["engine"].values() for p in player["params"])


def test_a_fit_without_checkpoints_that_diverges_says_nothing_was_saved():
    model, guide = user_pair()
    with pytest.raises(ppdgm.TrainingDiverged, match="Nothing was saved; lower the learning rate"):
        ppdgm.fit(model, guide, "digits-binary", "vae", epochs=2, optimizer="sgd", lr=1e3, progress=False)


def test_the_cli_states_what_ran_and_needs_override_for_a_changed_rate(tmp_path, capsys):
    import json

    out = tmp_path / "run"
    base = ["train", "--steps", "3", "--hidden", "8", "--z-dim", "2", "--quiet", "--out", str(out)]
    assert main(base) == 0
    assert main([*base, "--lr", "0.01"]) == 2
    assert "other training settings (lr: 0.001 -> 0.01)" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["lr"] == 0.001  # still what ran
    assert main(["train", "--steps", "6", *base[3:], "--lr", "0.01", "--override"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.01 and config["fit"]["lr"] == 0.01 and config["fit"]["steps"] == 6


def test_ctrl_c_in_training_is_one_line_naming_the_checkpoint_and_status_130(tmp_path, capsys, monkeypatch):
    from ppdgm.cli import main as cli

    def interrupt(run, record):
        raise KeyboardInterrupt

    fit = cli.fit
    monkeypatch.setattr(cli, "fit", lambda *a, **k: fit(*a, callbacks=[interrupt], **k))
    out = tmp_path / "run"
    assert main(["train", "--epochs", "3", "--hidden", "8", "--z-dim", "2", "--quiet", "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"ppdgm: interrupted after 1 complete epoch(s); the checkpoint in {out} resumes it"


def test_skipping_non_finite_updates_keeps_the_parameters_finite_and_counts_the_skips():
    model, guide = user_pair()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = ppdgm.fit(
            model, guide, "digits-binary", "vae", epochs=2, optimizer="sgd", lr=1e3, progress=False, skip_nonfinite=True
        )
    assert all(bool(torch.isfinite(p).all()) for player in run.engine.players.values() for p in player.params)
    skipped = [record["skipped_updates"] for record in run.history]
    assert sum(skipped) > 0 and all(0 <= s <= 13 for s in skipped), skipped  # 13 updates an epoch (one phase)
    # an epoch whose every update was skipped has nan metrics, and says so
    warned = [str(w.message) for w in caught if "every update was skipped" in str(w.message)]
    assert [f"epoch {i + 1}" for i, s in enumerate(skipped) if s == 13] == [m.split(":")[0] for m in warned]


KILLED_RUN = """
import os, signal, sys
import torch
import ppdgm
import ppdgm.compile.step
from ppdgm.zoo import build

out, kill_at = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
data = ppdgm.data.load("digits-binary")
torch.manual_seed(0)
model, guide = build("vae-mlp", data.dim, hidden=(16,), z_dim=4)
step, count = ppdgm.compile.step.CompiledStep.__call__, [0]

def step_then_maybe_die(self, x, context=()):  # every step, compiled or eager, goes through here
    count[0] += 1
    if count[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # mid-epoch: no chance to clean up
    return step(self, x, context)

ppdgm.compile.step.CompiledStep.__call__ = step_then_maybe_die
run = ppdgm.fit(model, guide, data, "vae", epochs=3, seed=3, progress=False, checkpoint_dir=out)
torch.save([p.detach() for pl in run.engine.players.values() for p in pl.params], os.path.join(out, "final.pt"))
"""


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result_bit_for_bit(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)

    def launch(out, kill_at):
        return subprocess.run([sys.executable, str(script), str(out), str(kill_at)], capture_output=True, text=True)

    assert launch(tmp_path / "whole", 0).returncode == 0
    killed = launch(tmp_path / "killed", 20)  # epoch 2 of 3 (13 steps an epoch), step 7 of it
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = launch(tmp_path / "killed", 0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = torch.load(tmp_path / "whole" / "final.pt", weights_only=True)
    again = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    assert all(torch.equal(a, b) for a, b in zip(whole, again))


def _rows_fit(tmp_path, data, **options):
    model, guide = user_pair()
    options = {"epochs": 1, "batch_size": 50, "progress": False, "seed": 0, **options}
    return ppdgm.fit(model, guide, data, "vae", checkpoint_dir=tmp_path, **options)


def _loader(rows, **options):
    return DataLoader(TensorDataset(rows), batch_size=50, **{"shuffle": True, **options})


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        (lambda rows: _loader(rows[:150]), r"with other training data \(rows: 200 -> 150, "),
        (lambda rows: _loader(rows.flip(0)), r"with other training data \(other values in the sampled rows\)"),
        (
            lambda rows: _loader(rows, shuffle=None, sampler=RandomSampler(rows, num_samples=100)),
            r"with other training data \(sampler: None -> \{'sampler': 'random'",
        ),
        (lambda rows: rows[:150], r"belongs to another run \(data: 'TensorDataset' -> 'tensor'\)"),
    ],
)
def test_resume_refuses_other_data_naming_what_changed(tmp_path, changed, named):
    """A checkpoint records a fingerprint of the training rows (count, columns, a hash of 64 rows spread over the
    set, the sampler); a resume on other rows is refused naming the difference, and resume='override' continues."""
    rows = ppdgm.data.load("digits-binary").train[:200]
    _rows_fit(tmp_path, _loader(rows))
    with pytest.raises(CheckpointError, match=named):
        _rows_fit(tmp_path, changed(rows), epochs=3)
    if "another run" not in named:
        assert _rows_fit(tmp_path, changed(rows), epochs=3, resume="override").history[-1]["step"] > 4


def test_a_resume_on_the_same_rows_continues(tmp_path):
    rows = ppdgm.data.load("digits-binary").train[:200]
    _rows_fit(tmp_path, rows)
    assert len(_rows_fit(tmp_path, rows.clone(), epochs=2).history) == 2


def test_the_row_hashes_that_checkpoints_hold_do_not_change():
    """A checkpoint's data fingerprint is compared with a hash of the rows computed again on resume: a change of the
    hash would refuse every earlier checkpoint as 'other data'. Both forms are pinned (``sample_v1``: checkpoints
    written before 2026-12-05, when a refactor changed the hash and earlier runs could no longer resume)."""
    rows = Batch((torch.arange(6.0).reshape(3, 2), torch.tensor([[True], [False], [True]])))
    assert digest_rows(rows) == "40787351c5d87e4db1b31e71d1748d7093856a4d143f45a0bf514648ebd92fbc"
    assert digest_rows_v1(rows) == "0b8979426d49761ba9c1efda05fd52ed83798ff67e518b84de8142c34afa31bd"


def test_a_checkpoint_with_the_earlier_row_hash_resumes_on_the_same_rows_only(tmp_path):
    rows = ppdgm.data.load("digits-binary").train[:200]
    _rows_fit(tmp_path, _loader(rows))
    path = tmp_path / "checkpoint.pt"
    state = storage.load(path)
    identity = state["config"]["data_identity"]
    identity["sample"] = identity.pop("sample_v1")  # as a ppdgm of before 2026-12-05 wrote it
    storage.save({k: v for k, v in state.items() if k != storage.CHECKSUM}, path)
    with pytest.raises(CheckpointError, match=r"with other training data \(other values in the sampled rows\)"):
        _rows_fit(tmp_path, _loader(rows.flip(0)), epochs=2)
    assert len(_rows_fit(tmp_path, _loader(rows), epochs=2).history) == 2


def _params_of(run):
    return [p.detach().clone() for player in run.engine.players.values() for p in player.params]


@pytest.mark.parametrize(
    ("first", "then"),
    [({"steps": 3}, {"steps": 6}), ({"steps": 30}, {"steps": 60}), ({"epochs": 1}, {"steps": 40}),
     ({"steps": 20}, {"epochs": 2})],
)  # fmt: skip
def test_a_budget_extended_equals_the_uninterrupted_run_with_validation(tmp_path, first, then):
    """Validation runs on its own copy of the random state, so a budget that ended inside an epoch (and validated
    there) continues on the stream an uninterrupted run has: parameters and history, validation included, equal."""

    def fit(folder, budget):
        torch.manual_seed(0)  # the networks' initial weights
        return _fit(folder, batch_size=50, **{"epochs": None, **budget})

    fit(tmp_path, first)
    extended = fit(tmp_path, then)
    whole = fit(tmp_path / "whole", then)
    for a, b in zip(_params_of(extended), _params_of(whole), strict=True):
        assert torch.equal(a, b)
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in extended.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in whole.history
    ]
    assert "valid_elbo" in whole.history[-1]


def test_a_finished_run_fitted_again_keeps_its_history(tmp_path):
    """The same budget again trains nothing and returns the run as it ended (a budget ending inside an epoch too)."""
    done = _fit(tmp_path, steps=3, epochs=None)
    again = _fit(tmp_path, steps=3, epochs=None)
    assert again.history == done.history and len(again.history) == 1
    for a, b in zip(_params_of(done), _params_of(again), strict=True):
        assert torch.equal(a, b)


def test_the_cli_run_again_with_the_same_budget_rewrites_nothing_with_less(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--steps", "3", "--hidden", "16", "--z-dim", "2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    history = (out / "history.csv").read_text()
    params = torch.load(out / "params.pt", weights_only=True)
    assert main(args) == 0
    assert (out / "history.csv").read_text() == history
    again = torch.load(out / "params.pt", weights_only=True)
    assert again["history"] == params["history"] and len(params["history"]) == 1

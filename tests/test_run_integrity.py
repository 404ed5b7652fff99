"""Runs that cannot lie: one writer per run folder, comparisons that never mix, file-system errors named in one line,
and the bad inputs of data sets, options and outputs named."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import ppdgm
from ppdgm.cli.main import main
from ppdgm.compare import SpecError, compare
from ppdgm.errors import UsageError
from ppdgm.programs.sites import ConventionError
from ppdgm.runtime.storage import LOCK_NAME, TMP_MARK, FolderBusy, OutputError

from .test_compare import DETERMINISTIC, tiny_spec
from .test_training import user_pair

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from ppdgm.runtime.storage import writing
with writing(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _fit(folder, **options):
    torch.manual_seed(0)
    model, guide = user_pair()
    options = {"steps": 3, "batch_size": 50, "progress": False, **options}
    return ppdgm.fit(model, guide, "digits-binary", "vae", checkpoint_dir=folder, **options)


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.communicate()


def _holder(folder: Path, seconds: float) -> subprocess.Popen:
    """Another process holding ``folder`` as its writer for ``seconds``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stdout.readline().strip() == b"holding"
    return process


# ---------------------------------------------------------------- one writer per run folder
def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    holder = _holder(tmp_path / "run", 30)
    try:
        with pytest.raises(FolderBusy, match=rf"being written by another process \(pid {holder.pid} on .*, since "):
            _fit(tmp_path / "run")
        assert not (tmp_path / "run" / "checkpoint.pt").exists()  # refused before any training
        assert main(["train", "--steps", "2", "--quiet", "--out", str(tmp_path / "run")]) == 2
    finally:
        _stop(holder)


def test_the_lock_of_a_killed_writer_is_taken_over(tmp_path):
    holder = _holder(tmp_path / "run", 30)
    os.kill(holder.pid, signal.SIGKILL)
    _stop(holder)
    assert str(holder.pid) in (tmp_path / "run" / LOCK_NAME).read_text()  # its record is still there, its lock is not
    assert _fit(tmp_path / "run").history[-1]["step"] == 3


def test_two_cli_trainings_started_together_leave_one_consistent_run(tmp_path):
    """Two `ppdgm train` into one folder at once (seeds 0 and 1): exactly one trains, the other is refused in one
    line naming it; config.json and the checkpoint belong to the same run."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def start(seed):
        command = [sys.executable, "-m", "ppdgm", "train", "--steps", "300", "--hidden", "16", "--z-dim", "2"]
        return subprocess.Popen(
            [*command, "--seed", str(seed), "--quiet", "--out", str(out)], env=env, stderr=subprocess.PIPE, text=True
        )

    first, second = start(0), start(1)
    errors = first.communicate(timeout=300)[1] + second.communicate(timeout=300)[1]
    assert sorted((first.returncode, second.returncode)) == [0, 2], errors
    assert "is being written by another process (pid " in errors and "Traceback" not in errors
    config = json.loads((out / "config.json").read_text())
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["config"]
    assert config["seed"] == config["fit"]["seed"] == saved["seed"]


def test_stale_temporaries_are_removed_and_files_get_the_users_mode(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / f".checkpoint.pt.x1y2{TMP_MARK}.pt"
    stale.write_bytes(b"half a checkpoint")
    _fit(out)
    assert not stale.exists()
    plain = tmp_path / "plain"
    plain.write_text("")
    for name in ("checkpoint.pt",):
        assert stat.S_IMODE((out / name).stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert not list(out.glob(f"*{TMP_MARK}*"))


# ---------------------------------------------------------------- file-system errors, in one line
def test_a_full_disk_is_one_line_naming_the_file_and_the_last_checkpoint_stays(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fit(out, steps=2)
    good = torch.load(out / "checkpoint.pt", weights_only=True)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OutputError, match=r"checkpoint .*checkpoint\.pt \(No space left on device\); the previous"):
        _fit(out, steps=4)
    monkeypatch.undo()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == good["step"]
    assert not list(out.glob(f"*{TMP_MARK}*"))


def test_an_output_folder_that_cannot_be_created_is_refused_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError, match=r"cannot create the run folder .*a-file/run"):
        _fit(blocker / "run")


def test_a_folder_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(LOCK_NAME):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OutputError, match=r"cannot write in the run folder .* \(Permission denied\)"):
        _fit(tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ---------------------------------------------------------------- comparisons never mix
def test_a_comparison_refuses_a_folder_trained_under_another_spec(tmp_path):
    out = tmp_path / "cmp"
    compare(tiny_spec(out, DETERMINISTIC), progress=False)
    before = (out / "runs" / "vae-seed0" / "result.json").read_text()
    other = tiny_spec(out, DETERMINISTIC)
    other["model"]["options"]["hidden"] = [8]
    with pytest.raises(SpecError, match=r"runs/vae-seed0 holds a run trained otherwise \(model_options: .*16.* -> "):
        compare(other, progress=False)
    faster = tiny_spec(out, DETERMINISTIC)
    faster["budget"]["lr"] = 1e-2
    with pytest.raises(SpecError, match=r"lr: 0\.003 -> 0\.01.*another output folder"):
        compare(faster, progress=False)
    shorter = tiny_spec(out, DETERMINISTIC)
    shorter["budget"]["steps"] = 13
    with pytest.raises(SpecError, match=r"steps: 26 -> 13 \(a shorter budget\)"):
        compare(shorter, progress=False)
    assert (out / "runs" / "vae-seed0" / "result.json").read_text() == before


def test_a_semi_supervised_run_scored_on_labelled_evaluation_rows_is_not_reused(tmp_path):
    """Before 2026-12-05 a semi-supervised set's validation and test rows were marked labelled, and scored with the
    model's classification term: such a run's stored result and history are refused, not reported."""
    from ppdgm.compare import parse_spec, preset_spec
    from ppdgm.compare.runner import run_one, training_identity
    from ppdgm.compare.spec import run_dir

    spec = parse_spec(preset_spec("paper-aasvae", "small"), output=tmp_path / "cmp")
    method = spec.methods[0]
    folder = run_dir(spec, method, 0)
    folder.mkdir(parents=True)
    identity = training_identity(spec, method, 0)
    assert identity.pop("validation_and_test_rows") == "unlabelled"
    (folder / "config.json").write_text(json.dumps({"training": identity, "budget": {"steps": spec.steps}}))
    (folder / "result.json").write_text(json.dumps({"spec_hash": spec.digest(), "metrics": {"elbo": -170.0}}))
    with pytest.raises(SpecError, match=r"holds a run trained otherwise \(validation_and_test_rows: None -> 'unl"):
        run_one(spec.to_dict(), 0, 0)


def test_a_comparison_given_a_longer_budget_extends_its_runs(tmp_path):
    out = tmp_path / "cmp"
    compare(tiny_spec(out, DETERMINISTIC), progress=False)
    longer = tiny_spec(out, DETERMINISTIC)
    longer["budget"]["steps"] = 39
    extended = compare(longer, progress=False)
    whole = compare(tiny_spec(tmp_path / "whole", DETERMINISTIC) | {"budget": longer["budget"]}, progress=False)
    assert extended["rows"] == whole["rows"]


def test_budget_is_refused_beside_a_spec_file_and_a_rerun_says_what_differs(tmp_path, capsys):
    spec = tmp_path / "plain.toml"
    spec.write_text('name = "x"\nmethods = [{name = "vae"}]\n')
    assert main(["compare", str(spec), "--budget", "small", "--out", str(tmp_path / "o")]) == 2
    assert "--budget picks a budget of a preset" in capsys.readouterr().err
    out = tmp_path / "cmp"
    raw = tiny_spec(out, DETERMINISTIC)
    raw["methods"] = raw["methods"][:1]
    raw["seeds"] = [0]
    compare(raw, progress=False)
    record = json.loads((out / "record.json").read_text())
    record["versions"]["torch"] = "0.0.1"
    (tmp_path / "old.json").write_text(json.dumps(record))
    assert main(["compare", "--rerun", str(tmp_path / "old.json"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert f"rerun: torch 0.0.1 when recorded, {torch.__version__} here" in capsys.readouterr().out


# ---------------------------------------------------------------- bad inputs, named
class Items(Dataset):
    """64 binary values per item; item 37 is odd in the way ``odd`` says."""

    def __init__(self, odd: str) -> None:
        self.odd = odd

    def __len__(self) -> int:
        return 100

    def __getitem__(self, i: int):
        x = (torch.arange(64) % (i % 5 + 2) == 0).float()
        if i == 37 and self.odd == "size":
            return x[:63]
        if i == 37 and self.odd == "raise":
            raise RuntimeError("cannot decode file 37")
        if self.odd == "key":
            return {"x": x, "extra": 1.0} if i == 37 else {"x": x}
        if self.odd == "triple":
            return (x, 1, 2) if i == 37 else (x, 1)
        return x


def _pair_for(odd):
    """The user's pair, taking the extra columns an item layout gives."""
    model, guide = user_pair()
    if odd == "key":
        return (lambda x, extra=None: model(x)), (lambda x, extra=None: guide(x))
    if odd == "triple":
        return (lambda x, *rest: model(x)), (lambda x, *rest: guide(x))
    return model, guide


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(
    ("odd", "named"),
    [
        ("size", r"item 37 of the data set is a tensor of shape \[63\] .*, but item \d+ of the same batch is a tensor"),
        ("key", r"item 37 of the data set is a dict with keys \['extra', 'x'\], but item \d+ .* keys \['x'\]"),
        ("triple", r"item 37 of the data set is a 3-tuple .* but item \d+ of the same batch is a 2-tuple"),
        ("raise", r"reading item 37 of the data set raised RuntimeError: cannot decode file 37"),
    ],
)
def test_a_bad_item_is_named(odd, named, workers):
    loader = DataLoader(Items(odd), batch_size=20, num_workers=workers)
    with pytest.raises(UsageError, match=named):
        ppdgm.fit(*_pair_for(odd), loader, "vae", steps=6, shuffle=False, progress=False)


def test_a_refused_optimizer_option_is_named():
    model, guide = user_pair()
    with pytest.raises(UsageError, match=r"refuses its option betas=0\.5"):
        ppdgm.fit(model, guide, "digits-binary", "vae", steps=1, progress=False, optimizer_options={"betas": 0.5})


def test_enumerating_a_continuous_site_names_it():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z[..., None], 1.0).expand(z.shape + (3,)).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0), infer={"enumerate": "parallel"})

    with pytest.raises(ConventionError, match=r"site .z. is marked for enumeration, but .*Normal has no finite"):
        ppdgm.fit(model, guide, torch.randn(20, 3), "vae", steps=1, progress=False)


def test_sampling_to_a_path_that_is_not_png_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--steps", "2", "--hidden", "16", "--z-dim", "2", "--quiet", "--out", str(run)]) == 0
    assert main(["sample", str(run), "--png", str(tmp_path / "x.txt")]) == 2
    assert "give a path ending in .png, got" in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists()


def test_every_update_skipped_for_an_epoch_warns_that_its_metrics_are_nan():
    def model(x):
        w = pyro.param("w", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0).expand([x.shape[0], 3]).to_event(1), obs=x)
            pyro.factor("broken", torch.log(w - w))  # -inf: every loss non-finite

    with pytest.warns(RuntimeWarning) as caught:
        run = ppdgm.fit(model, None, torch.randn(20, 3), "mle", steps=2, skip_nonfinite=True, progress=False)
    messages = [str(w.message) for w in caught if "every update was skipped" in str(w.message)]
    assert [m.split(":")[0] for m in messages] == ["epoch 1", "epoch 2"]
    assert "the epoch's metrics are nan and the parameters did not move" in messages[0]
    assert [r["skipped_updates"] for r in run.history] == [1, 1]

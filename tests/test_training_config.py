"""One training configuration: fit's keywords, the command line and a comparison spec make the same TrainingConfig for
the same settings, and a fit given the config records exactly what a fit given the keywords records."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import ppdgm
from ppdgm.cli.main import parser, training_config
from ppdgm.compare import parse_spec
from ppdgm.errors import UsageError
from ppdgm.training.config import GROUPS, TrainingConfig
from ppdgm.zoo import build


def test_the_cli_fit_and_a_comparison_spec_make_the_same_config(tmp_path):
    out = str(tmp_path / "run")
    argv = ["train", "--method", "iwae", "--num-particles", "5", "--epochs", "3", "--batch-size", "50"]
    argv += ["--lr", "0.002", "--seed", "4", "--out", out, "--quiet"]
    from_cli = training_config(parser().parse_args(argv))
    spec = parse_spec(
        {
            "name": "same",
            "output": str(tmp_path / "compare"),
            "seeds": [4],
            "data": {"name": "digits-binary"},
            "model": {"preset": "vae-mlp"},
            "budget": {"epochs": 3, "batch_size": 50, "lr": 0.002},
            "methods": [{"name": "iwae", "options": {"num_particles": 5}}],
        }
    )
    from_spec = spec.training_config(spec.methods[0], 4, checkpoint_dir=out, progress=False)
    from_fit = TrainingConfig.of(
        epochs=3, batch_size=50, lr=0.002, seed=4, checkpoint_dir=out, progress=False, num_particles=5
    )
    assert from_cli == from_spec == from_fit
    assert from_fit.method_options == {"num_particles": 5}
    assert dataclasses.replace(from_fit, lr=0.003) != from_cli  # the comparison can fail


def test_every_field_belongs_to_one_group():
    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(TrainingConfig) if f.name != "method_options")
    assert len(grouped) == len(set(grouped))


def test_fit_with_a_config_records_what_fit_with_keywords_records():
    x = (torch.rand(60, 8) < 0.5).float()
    options = dict(steps=4, batch_size=20, lr=0.01, seed=2, progress=False, num_particles=2)
    runs = []
    for call in ({**options}, {"config": TrainingConfig.of(**options)}):
        torch.manual_seed(0)
        model, guide = build("vae-mlp", 8, z_dim=2, hidden=[8])
        runs.append(ppdgm.fit(model, guide, x, "iwae", **call))
    assert runs[0].config == runs[1].config
    same = [{k: v for k, v in record.items() if k != "seconds"} for run in runs for record in run.history]
    assert same[: len(same) // 2] == same[len(same) // 2 :]
    overridden = TrainingConfig.of(TrainingConfig.of(**options), lr=0.5)
    assert overridden.lr == 0.5 and overridden.method_options == {"num_particles": 2}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"resume": "yes"}, "resume must be True, False or 'override'"),
        ({"checkpoint_every": 5}, "checkpoint_every needs a checkpoint_dir"),
        ({"compile": 1}, "compile must be 'auto', True or False"),
    ],
)
def test_a_bad_option_is_named_before_any_work(options, message):
    with pytest.raises(UsageError, match=message):
        TrainingConfig.of(**options).check()

import json

import pytest
import torch

import ppdgm
from ppdgm.cli.main import load_run, main
from ppdgm.guides import ImplicitMLPEncoder


def test_methods_lists_one_line_per_method(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = sorted(ppdgm.available_methods())
    assert {"gan", "wgan-gp", "aae", "bigan", "infogan", "vaegan", "gmmn", "iwgan", "aavae"} <= set(names)
    assert [line.split()[0] for line in lines] == names
    by_name = dict(zip(names, lines))
    assert by_name["vae"].endswith("[alias: elbo]") and by_name["ws"].endswith("[alias: wake-sleep]")
    assert by_name["bigan"].endswith("[alias: ali]")


def test_train_evaluate_sample_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        "vae-mlp",
        "--data",
        "digits-binary",
        "--method",
        "iwae",
        "--num-particles",
        "3",
        "--steps",
        "30",
        "--z-dim",
        "4",
        "--hidden",
        "32",
        "--seed",
        "0",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    for name in ("config.json", "params.pt", "checkpoint.pt", "history.csv", "samples.png"):
        assert (out / name).exists(), name
    assert "trained iwae for 30 steps" in capsys.readouterr().out
    step_path = json.loads((out / "config.json").read_text())["fit"]["step_path"]
    # the first step is eager; so is the re-check on the recording's first replay
    assert step_path["path"] == "compiled" and step_path["compiled_steps"] == 29 and step_path["rechecks"] == 2
    assert main(["evaluate", str(out), "--num-samples", "20"]) == 0
    result = json.loads((out / "eval_test.json").read_text())
    assert result["n"] == 297 and -80 < result["mean"] < 0 and result["stderr"] > 0
    assert main(["evaluate", str(out), "--num-samples", "20"]) == 0
    assert json.loads((out / "eval_test.json").read_text()) == result  # seeded: repeatable
    png = tmp_path / "grid.png"
    assert main(["sample", str(out), "--n", "16", "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_compile_off_runs_the_eager_step(tmp_path):
    out = tmp_path / "eager"
    args = ["train", "--data", "digits-binary", "--steps", "5", "--compile", "off", "--out", str(out), "--quiet"]
    assert main(args) == 0
    step_path = json.loads((out / "config.json").read_text())["fit"]["step_path"]
    assert step_path["path"] == "eager" and step_path["compile"] is False and step_path["eager_steps"] == 5


def test_errors_are_reported_without_a_traceback(tmp_path, capsys):
    assert main(["train", "--method", "nope", "--out", str(tmp_path), "--quiet"]) == 2
    known = ", ".join(sorted(ppdgm.available_methods()))
    assert f"unknown method 'nope'; known methods: {known}" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--steps", "1", "--out", str(tmp_path), "--quiet"]) == 2
    assert "outside the support of the Bernoulli likelihood" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "not a ppdgm run folder" in capsys.readouterr().err


def test_train_a_sigmoid_belief_net_with_rws(tmp_path, capsys):
    out = tmp_path / "sbn"
    args = [
        "train",
        "--model",
        "sbn",
        "--method",
        "rws",
        "--num-particles",
        "5",
        "--layers",
        "20,5",
        "--hidden",
        "",
        "--steps",
        "20",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    assert "trained rws for 20 steps" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_options"] == {"hidden": [], "layers": [20, 5]}
    assert main(["evaluate", str(out), "--num-samples", "10"]) == 0
    assert main(["train", "--model", "sbn", "--z-dim", "3", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "model 'sbn' takes no option(s) ['z_dim']" in capsys.readouterr().err


def test_train_with_the_same_seed_is_reproducible(tmp_path, capsys):
    """--seed fixes the initial networks as well as the data order and the draws."""
    states = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["train", "--steps", "5", "--hidden", "16", "--z-dim", "2", "--out", str(out), "--quiet"]) == 0
        states.append(torch.load(out / "params.pt", weights_only=False)["players"])
    for player, named in states[0].items():
        for name, value in named.items():
            assert torch.equal(value, states[1][player][name]), name


def test_train_with_bf16_precision_records_it(tmp_path, capsys):
    out = tmp_path / "bf16"
    args = ["train", "--steps", "3", "--hidden", "16", "--z-dim", "2", "--precision", "bf16", "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
    assert torch.load(out / "params.pt", weights_only=False)["config"]["precision"] == "bf16"
    with pytest.raises(SystemExit):  # argparse refuses it, listing the choices
        main(["train", "--precision", "fp16", "--out", str(tmp_path / "bad"), "--quiet"])
    assert "choose from 'fp32', 'bf16'" in capsys.readouterr().err


def test_train_bigan_with_the_implicit_encoder(tmp_path, capsys):
    out = tmp_path / "bigan"
    args = ["train", "--model", "gan-mlp", "--encoder", "implicit", "--data", "ring8", "--method", "bigan"]
    assert main([*args, "--steps", "5", "--hidden", "16,16", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_options"]["encoder"] == "implicit"
    _, _, _, guide = load_run(out)  # a saved run rebuilds the same pair
    assert isinstance(guide, ImplicitMLPEncoder)

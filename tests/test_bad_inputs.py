"""Bad input, table-driven: every case gets a ppdgm error (a PpdgmError) whose message names the argument or site.

Each row is (what is bad, a call that passes it, a regular expression the message must match). The calls
go through ``fit``, the ``evaluate`` functions, ``sample``, comparison specs, checkpoint files and the
command line; none may end in a traceback from inside torch, Pyro or NumPy.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import ppdgm
from ppdgm.cli.main import main
from ppdgm.compare import parse_spec

from .test_training import user_pair

DIGITS = ppdgm.data.load("digits-binary")
X = DIGITS.test[:20]


def fit(**options):
    model, guide = user_pair()
    budget = {} if "epochs" in options or "steps" in options else {"steps": 1}
    options = {**budget, "progress": False, **options}
    data = options.pop("data", "digits-binary")
    method = options.pop("method", "vae")
    return ppdgm.fit(model, guide, data, method, **options)


def evaluate(function, *args, **options):
    model, guide = user_pair()
    return getattr(ppdgm.evaluate, function)(model, guide, options.pop("data", X), *args, **options)


BAD_NUMBERS = [0, -1, 1.5, float("nan"), float("inf"), "abc", True, None, [3]]

FIT_COUNTS = [
    (f"{name}={value!r}", {name: value}, rf"{name} must be a positive integer")
    for name in ("epochs", "steps", "batch_size", "log_every")
    for value in BAD_NUMBERS
    if not (value is None and name in ("epochs", "steps", "batch_size"))
]
FIT_OTHER = [
    ("checkpoint_every without a folder", {"checkpoint_every": 5}, "checkpoint_every needs a checkpoint_dir"),
    ("checkpoint_every=0", {"checkpoint_every": 0}, "checkpoint_every must be a positive integer"),
    ("shuffle='yes'", {"shuffle": "yes"}, "shuffle must be True or False"),
    ("an unknown transform", {"transform": "binarise"}, "unknown transform 'binarise'; known: binarize, dequantize"),
    ("both epochs and steps", {"epochs": 1, "steps": 2}, "give epochs or steps, not both"),
    *[(f"lr={v!r}", {"lr": v}, "lr must be a positive finite number") for v in (0, -1e-3, float("nan"), "abc", True)],
    (
        "lr for an unknown player",
        {"lr": {"modle": 1e-2}},
        r"lr names unknown player\(s\) \['modle'\].*did you mean 'model'",
    ),
    (
        "optimizer for an unknown player",
        {"optimizer": {"gide": "sgd"}},
        r"optimizer names unknown player\(s\) \['gide'\]",
    ),
    ("options for an unknown player", {"optimizer_options": {"modle": {"eps": 1e-8}}}, r"optimizer_options names"),
    ("betas=0.5", {"optimizer_options": {"betas": 0.5}}, r"optimizer of player 'model' refuses its option betas=0\.5"),
    ("an unknown optimizer", {"optimizer": "adamm"}, r"unknown optimizer 'adamm'"),
    *[(f"seed={v!r}", {"seed": v}, "seed must be a non-negative integer") for v in (-1, 1.5, "0", True)],
    *[
        (f"validate_every={v!r}", {"validate_every": v}, "validate_every must be a non-negative integer")
        for v in (-1, 0.5)
    ],
    ("device='gpu'", {"device": "gpu"}, r"unknown device 'gpu'"),
    ("device=3.5", {"device": 3.5}, r"unknown device 3.5"),
    ("an unknown precision", {"precision": "fp8"}, r"precision must be one of"),
    ("an unknown schedule", {"lr_schedule": "cosine"}, r"unknown lr_schedule 'cosine'"),
    ("resume='yes'", {"resume": "yes"}, r"resume must be True, False or 'override'"),
    ("progress='no'", {"progress": "no"}, r"progress must be True or False"),
    ("callbacks of non-callables", {"callbacks": [1]}, r"callbacks must be callables"),
    ("an unknown method", {"method": "gann"}, r"unknown method 'gann'; known methods"),
    ("a method option it lacks", {"method": "vae", "num_particle": 3}, r"bad options for method 'vae'"),
    ("num_particles=0", {"method": "iwae", "num_particles": 0}, r"num_particles must be a positive integer"),
    ("an unknown guide_gradient", {"method": "iwae", "guide_gradient": "dregs"}, r"guide_gradient must be one of"),
    ("an unknown data set", {"data": "mnist-typo"}, r"unknown data set 'mnist-typo'"),
    ("data of no rows (a scalar)", {"data": torch.tensor(1.0)}, r"one datapoint per row"),
    ("data of a wrong type", {"data": 3}, r"data must be a data set name"),
    ("grey data for a Bernoulli", {"data": "digits"}, r"outside the support of the Bernoulli likelihood at site 'x'"),
    (
        "data 63 wide for a 64-pixel model",
        {"data": DIGITS.train[:, :63]},
        r"site 'x' have shape \(100, 63\).*\(64,\)",
    ),
    ("a latent-variable model for mle", {"method": "mle"}, r"method 'mle' needs a fully observed model.*\['z'\]"),
]


@pytest.mark.parametrize(("case", "options", "message"), FIT_COUNTS + FIT_OTHER, ids=lambda v: str(v)[:40])
def test_fit_names_the_bad_argument(case, options, message):
    with pytest.raises(ppdgm.PpdgmError, match=message):
        fit(**options)


def test_nan_data_names_the_rows():
    x = DIGITS.train.clone()
    x[3, 5] = float("nan")
    with pytest.raises(ppdgm.PpdgmError, match=r"contain NaN \(first rows: \[3\]\)"):
        fit(data=x)


@pytest.mark.parametrize(
    ("values", "kind"), [((float("inf"), float("-inf")), "infinite values"), ((float("nan"), 1.0), "NaN")]
)
def test_non_finite_values_whose_sum_is_not_finite_are_named(values, kind):
    """The finite check's one-pass sum sees opposite infinities (their sum is NaN) and NaN."""
    x = DIGITS.train.clone()
    x[2, 0], x[7, 1] = values
    with pytest.raises(ppdgm.PpdgmError, match=rf"contain {kind} \(first rows: \[2"):
        fit(data=x)


def test_finite_values_whose_sum_overflows_are_not_refused_as_non_finite():
    x = torch.full((4, 8), 3e38)  # finite, but their float32 sum is infinite
    pair = ppdgm.ProgramPair(*user_pair())
    pair.check_finite(x)  # no error


def test_a_binary_flag_given_with_a_dataset_is_not_trusted():
    """fit skips the support check only for rows it has just found to be 0s and 1s itself."""
    grey = ppdgm.data.load("digits")
    flagged = ppdgm.data.Dataset("grey, flagged binary", grey.train, binary=True)
    with pytest.raises(ppdgm.PpdgmError, match="outside the support of the Bernoulli likelihood"):
        fit(data=flagged)


def test_a_checkpoint_dir_that_is_a_file_is_named(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ppdgm.PpdgmError, match="is a file, not a folder"):
        fit(checkpoint_dir=path)


def _model_with_latent(width):
    dec = nn.Linear(4, 64)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], width), 1.0).to_event(1))

    return model, guide


@pytest.mark.parametrize("width", [3, 1, 5])
def test_a_guide_latent_of_the_wrong_shape_is_named_with_both_shapes(width):
    model, guide = _model_with_latent(width)
    with pytest.raises(ppdgm.PpdgmError, match=rf"latent site 'z' with shape \(100, {width}\).*shape \(100, 4\)"):
        ppdgm.fit(model, guide, "digits-binary", "vae", steps=1, progress=False)


EVALUATE = [
    *[
        (f"log_likelihood num_samples={v!r}", ("log_likelihood",), {"num_samples": v}, "num_samples must be a positive")
        for v in (0, -5, 2.5, "10")
    ],
    *[(f"iwae_bound k={v!r}", ("iwae_bound", v), {}, "k must be a positive integer") for v in (0, -1, 1.5)],
    ("iwae_bound num_repeats=0", ("iwae_bound", 5), {"num_repeats": 0}, "num_repeats must be a positive"),
    *[(f"elbo num_samples={v!r}", ("elbo",), {"num_samples": v}, "num_samples must be a positive") for v in (0, -2)],
    *[
        (f"{f} batch_size=0", (f,) + ((5,) if f == "iwae_bound" else ()), {"batch_size": 0}, "batch_size must be a")
        for f in ("log_likelihood", "elbo", "iwae_bound")
    ],
    ("log_likelihood max_elements=0", ("log_likelihood",), {"max_elements": 0}, "max_elements must be a positive"),
    *[
        (
            f"{f} on grey data",
            (f,) + ((5,) if f == "iwae_bound" else ()),
            {"data": ppdgm.data.load("digits").test},
            "outside the support of the Bernoulli likelihood",
        )
        for f in ("log_likelihood", "elbo", "iwae_bound")
    ],  # fmt: skip
    ("log_likelihood on 0.5-valued data", ("log_likelihood",), {"data": X * 0 + 0.5}, "outside the support"),
    ("log_likelihood on NaN data", ("log_likelihood",), {"data": X * float("nan")}, "contain NaN"),
    ("elbo on no data", ("elbo",), {"data": X[:0]}, "no data to evaluate on"),
    ("elbo on data of a wrong type", ("elbo",), {"data": "x"}, "data must be a tensor"),
]


@pytest.mark.parametrize(("case", "args", "options", "message"), EVALUATE, ids=lambda v: str(v)[:40])
def test_evaluate_names_the_bad_argument(case, args, options, message):
    with pytest.raises(ppdgm.PpdgmError, match=message):
        evaluate(*args, **options)


SAMPLE = [
    *[(f"n={v!r}", {"n": v}, "n must be a positive integer") for v in (0, -3, 2.5, True)],
    ("no like= for a bare model", {"n": 3, "like": None}, "needs like="),
    ("a condition for a model without inputs", {"n": 3, "condition": torch.zeros(3, 2)}, "the model has no inputs"),
]


@pytest.mark.parametrize(("case", "options", "message"), SAMPLE, ids=lambda v: str(v)[:40])
def test_sample_names_the_bad_argument(case, options, message):
    model, _ = user_pair()
    options = {"like": X, **options}
    n = options.pop("n")
    with pytest.raises(ppdgm.PpdgmError, match=message):
        ppdgm.sample(model, n, **options)


def _spec(**changes):
    spec = {
        "name": "bad",
        "data": {"name": "digits-binary"},
        "model": {"preset": "vae-mlp"},
        "budget": {"steps": 2},
        "methods": [{"name": "vae"}],
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            spec[section] = {**spec.get(section, {}), field: value}
        else:
            spec[section] = value
    return spec


SPECS = [
    ("a top-level typo", _spec(seeeds=[0]), r"seeeds: unknown field; did you mean 'seeds'\?"),
    ("a budget typo", _spec(budget__batchsize=10), r"budget.batchsize: unknown field; did you mean 'batch_size'"),
    ("an evaluation typo", _spec(evaluation__num_sample=5), r"evaluation.num_sample: unknown field"),
    ("a model typo", _spec(model__optoins={}), r"model.optoins: unknown field; did you mean 'options'"),
    ("a data typo", _spec(data__nmae="digits"), r"data.nmae: unknown field"),
    ("a method typo", _spec(methods=[{"name": "vae", "optoins": {}}]), r"methods\[0\].optoins: unknown field"),
    ("steps=0", _spec(budget__steps=0), r"budget.steps: must be a positive integer"),
    ("steps=2.0", _spec(budget__steps=2.0), r"budget.steps: must be a positive integer"),
    ("lr=0", _spec(budget__lr=0), r"budget.lr: must be a positive number"),
    ("lr=inf", _spec(budget__lr=float("inf")), r"budget.lr: must be a positive number"),
    ("negative seeds", _spec(seeds=[-1]), r"seeds: must not be negative"),
    ("repeated seeds", _spec(seeds=[1, 1]), r"seeds: repeated seeds"),
    ("an unknown data set", _spec(data__name="nope"), r"data.name: unknown data set 'nope'"),
    ("an unknown model", _spec(model__preset="nope"), r"model.preset: unknown model 'nope'"),
    ("an unknown metric", _spec(evaluation__metrics=["fidelity"]), r"evaluation.metrics: unknown \['fidelity'\]"),
    ("an unknown method", _spec(methods=[{"name": "gann"}]), r"methods\[0\]: unknown method 'gann'"),
    ("no methods", _spec(methods=[]), r"methods: must be a non-empty list"),
    ("a bad method option", _spec(methods=[{"name": "iwae", "options": {"num_particles": 0}}]), r"num_particles"),
    ("an unknown schedule", _spec(budget__lr_schedule="cosine"), r"budget.lr_schedule: unknown 'cosine'"),
    ("nproc_per_run=0", _spec(nproc_per_run=0), r"nproc_per_run: must be a positive integer"),
]


@pytest.mark.parametrize(("case", "spec", "message"), SPECS, ids=lambda v: str(v)[:40])
def test_a_bad_spec_names_the_field(case, spec, message):
    with pytest.raises(ppdgm.PpdgmError, match=message):
        parse_spec(spec)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\x00\xff\xfe random bytes", r"is not valid TOML"), (b"name = [unclosed", r"is not valid TOML")],
)
def test_a_spec_file_that_is_not_toml_is_named(tmp_path, content, message):
    path = tmp_path / "spec.toml"
    path.write_bytes(content)
    with pytest.raises(ppdgm.PpdgmError, match=rf"spec.toml {message}"):
        parse_spec(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "damaged or not a ppdgm file"),
        (b"PK\x03\x04 truncated zip", "damaged or not a ppdgm file"),
        (b"plain text", "damaged or not a ppdgm file"),
    ],
)
def test_a_damaged_checkpoint_is_named_with_how_to_start_fresh(tmp_path, content, message):
    (tmp_path / "checkpoint.pt").write_bytes(content)
    with pytest.raises(ppdgm.PpdgmError, match=rf"checkpoint.pt is {message}.*start fresh"):
        fit(checkpoint_dir=tmp_path)


def test_a_checkpoint_without_checksum_is_named(tmp_path):
    torch.save({"epoch": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(ppdgm.PpdgmError, match="has no checksum"):
        fit(checkpoint_dir=tmp_path)


CLI = [
    (["train", "--method", "nope"], "unknown method 'nope'"),
    (["train", "--lr", "0"], "lr must be a positive finite number"),
    (["train", "--steps", "0"], "steps must be a positive integer"),
    (["train", "--epochs", "0"], "epochs must be a positive integer"),
    (["train", "--batch-size", "0"], "batch_size must be a positive integer"),
    (["train", "--device", "gpu"], "unknown device 'gpu'"),
    (["train", "--data", "nope"], "invalid choice: 'nope'"),
    (["train", "--option", "novalue"], "--option takes KEY=VALUE"),
    (["train", "--z-dim", "0"], "model option z_dim must be a positive integer, got 0"),
    (["train", "--hidden", "0"], "model option hidden must be a positive integer, got 0"),
    (["train", "--model", "nope"], "invalid choice: 'nope'"),
    (["train", "--precision", "fp8"], "invalid choice: 'fp8'"),
    (["compare", "--preset", "nope"], "unknown comparison preset 'nope'"),
    (["compare", "--rerun", "missing.json"], "cannot read the comparison record missing.json"),
    (["compare", "missing.toml"], "spec file missing.toml does not exist"),
    (["evaluate", "no-such-run"], "not a ppdgm run folder"),
    (["sample", "no-such-run"], "not a ppdgm run folder"),
]


@pytest.mark.parametrize(("argv", "message"), CLI, ids=lambda v: " ".join(v) if isinstance(v, list) else v[:30])
def test_the_cli_reports_a_bad_argument_in_one_line_with_status_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    extra = ["--out", str(tmp_path / "run"), "--quiet"] if argv[0] == "train" else []
    try:
        status = main([*argv, *extra])
    except SystemExit as exit_:  # argparse's own refusal of a choice: its usage line, status 2
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and "error:" in err and "Traceback" not in err


def test_cli_evaluate_and_sample_name_their_bad_arguments(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--steps", "2", "--hidden", "8", "--z-dim", "2", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    for argv, message in [
        (["evaluate", str(out), "--num-samples", "0"], "num_samples must be a positive integer, got 0"),
        (["sample", str(out), "--n", "0"], "n must be a positive integer, got 0"),
        (["sample", str(out), "--n", "-4"], "n must be a positive integer, got -4"),
    ]:
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_cli_out_naming_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    assert main(["train", "--steps", "1", "--quiet", "--out", str(path)]) == 2
    assert "is a file; give a folder for the run" in capsys.readouterr().err


def test_cli_on_a_comparison_run_folder_says_what_it_is(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"method": "vae", "label": "vae", "seed": 0}')
    assert main(["evaluate", str(run)]) == 2
    assert "holds a run of `ppdgm compare`" in capsys.readouterr().err


def test_cli_on_a_killed_run_names_the_missing_parameters(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--steps", "2", "--hidden", "8", "--z-dim", "2", "--quiet", "--out", str(out)]) == 0
    (out / "params.pt").unlink()
    assert main(["evaluate", str(out)]) == 2
    assert "params.pt does not exist" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr("ppdgm.cli.main.cmd_methods", broken)
    with pytest.raises(KeyError):
        from ppdgm.cli import main as cli

        args = cli.parser().parse_args(["methods"])
        args.func = broken
        monkeypatch.setattr(cli.parser().__class__, "parse_args", lambda self, argv=None: args)
        cli.main(["methods"])


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys):
    from ppdgm.cli import main as cli

    def interrupted(args):
        raise KeyboardInterrupt

    parsed = cli.parser().parse_args(["methods"])
    parsed.func = interrupted
    monkeypatch.setattr(cli.parser().__class__, "parse_args", lambda self, argv=None: parsed)
    assert cli.main(["methods"]) == 130
    assert capsys.readouterr().err.strip() == "ppdgm: interrupted"

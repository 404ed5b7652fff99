"""Comparisons: spec validation, the runner, resume, results, record and rerun."""

import json
import os

import numpy as np
import pytest
import torch

from ppdgm.cli.main import main
from ppdgm.compare import SpecError, compare, comparison_names, parse_spec, run_dir, spec_from_record


def tiny_spec(output, metrics=("log_likelihood", "elbo", "active_units", "seconds_per_epoch")):
    return {
        "name": "tiny",
        "output": str(output),
        "seeds": [0, 1],
        "data": {"name": "digits-binary"},
        "model": {"preset": "vae-mlp", "options": {"z_dim": 3, "hidden": [16]}},
        "budget": {"steps": 26, "batch_size": 100, "lr": 3e-3},
        "evaluation": {"metrics": list(metrics), "num_samples": 20},
        "methods": [{"name": "vae"}, {"name": "iwae", "label": "iwae k=3", "options": {"num_particles": 3}}],
    }


def test_two_methods_two_seeds_end_to_end(tmp_path):
    out = tmp_path / "cmp"
    summary = compare(tiny_spec(out), progress=False)
    for name in ("results.md", "results.csv", "results.json", "record.json", "learning_curves.png", "samples.png"):
        assert (out / name).exists(), name
    spec = parse_spec(tiny_spec(out))
    for row, method in zip(summary["rows"], spec.methods):
        per_run = [json.loads((run_dir(spec, method, s) / "result.json").read_text())["metrics"] for s in (0, 1)]
        for metric in spec.metrics:
            values = np.array([r[metric] for r in per_run])
            assert row[metric]["mean"] == pytest.approx(values.mean(), abs=0, rel=1e-12)
            assert row[metric]["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        history = json.loads((run_dir(spec, method, 0) / "result.json").read_text())["history"]
        assert history[-1]["step"] == 26 and (run_dir(spec, method, 0) / "history.csv").exists()
    table = (out / "results.md").read_text()
    assert "| iwae k=3 |" in table and "±" in table
    record = json.loads((out / "record.json").read_text())
    assert record["spec_hash"] == spec.digest() and set(record["versions"]) >= {"ppdgm", "pyro", "torch", "numpy"}


DETERMINISTIC = ("log_likelihood", "elbo", "active_units")  # wall-clock metrics cannot repeat bit for bit


def test_same_spec_twice_gives_an_identical_table_and_interrupted_comparisons_resume(tmp_path):
    first = compare(tiny_spec(tmp_path / "a", DETERMINISTIC), progress=False)
    second = compare(tiny_spec(tmp_path / "b", DETERMINISTIC), progress=False)
    assert first == second
    assert (tmp_path / "a" / "results.md").read_text() == (tmp_path / "b" / "results.md").read_text()

    done = []

    def stop_after_first(result):
        done.append(result)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compare(tiny_spec(tmp_path / "c", DETERMINISTIC), progress=False, on_run_done=stop_after_first)
    spec = parse_spec(tiny_spec(tmp_path / "c", DETERMINISTIC))
    finished = run_dir(spec, spec.methods[0], 0) / "result.json"
    stamp = finished.stat().st_mtime_ns
    resumed = compare(spec, progress=False)
    assert finished.stat().st_mtime_ns == stamp  # the finished run was skipped, not redone
    assert resumed == first


def test_parallel_jobs_give_the_same_table(tmp_path):
    """Each of two jobs runs on half the cores; run one after the other on as many threads, the table is the same bit
    for bit (float reductions depend on the number of threads, so a different --jobs agrees to rounding only)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        sequential = compare(tiny_spec(tmp_path / "seq", DETERMINISTIC), progress=False)
    finally:
        torch.set_num_threads(threads)
    parallel = compare(tiny_spec(tmp_path / "par", DETERMINISTIC), jobs=2, progress=False)
    assert parallel == sequential


def test_a_bad_spec_names_every_bad_field_and_runs_nothing(tmp_path):
    raw = tiny_spec(tmp_path / "never")
    raw["seeds"] = [0, -1]
    raw["data"] = {"name": "mnist-typo"}
    raw["budget"] = {"epochs": "ten", "batch_size": 100}
    raw["methods"] = [{"name": "gann"}, {"name": "iwae", "options": {"num_particles": 0}}]
    raw["evaluation"]["metrics"] = ["log_likelihood", "fidelity"]
    raw["colour"] = "blue"
    raw["reference"] = {"metric": "elbo", "source": "a paper", "values": {"iwae k=7": -80.0}}
    with pytest.raises(SpecError) as err:
        compare(raw, progress=False)
    message = str(err.value)
    for expected in (
        "seeds: must not be negative",
        "data.name: unknown data set 'mnist-typo'",
        "budget.epochs: must be a positive integer, got 'ten'",
        "methods[0]: unknown method 'gann'",
        "methods[1]: num_particles must be a positive integer",
        "evaluation.metrics: unknown ['fidelity']",
        "colour: unknown field",
        "reference.values: labels ['iwae k=7'] are no method's label",
    ):
        assert expected in message, (expected, message)
    assert not (tmp_path / "never").exists()


def test_spec_from_toml_file_and_the_cli_with_rerun(tmp_path, capsys):
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(
        f"""
name = "toml"
output = "{tmp_path / "toml"}"
seeds = [3]

[data]
name = "digits-binary"

[model]
preset = "vae-mlp"
options = {{ z_dim = 2, hidden = [8] }}

[budget]
steps = 13

[evaluation]
metrics = ["elbo"]

[[methods]]
name = "vae"

[[methods]]
name = "rws"
options = {{ num_particles = 2 }}
"""
    )
    assert main(["compare", str(spec_file), "--quiet"]) == 0
    table = (tmp_path / "toml" / "results.md").read_text()
    assert (
        main(
            ["compare", "--rerun", str(tmp_path / "toml" / "record.json"), "--out", str(tmp_path / "again"), "--quiet"]
        )
        == 0
    )
    assert (tmp_path / "again" / "results.md").read_text() == table
    spec = spec_from_record(tmp_path / "again" / "record.json")
    assert spec.seeds == (3,) and [m.name for m in spec.methods] == ["vae", "rws"]
    assert main(["compare", "--preset", "nope", "--quiet"]) == 2
    assert "unknown comparison preset 'nope'" in capsys.readouterr().err


def test_presets_are_listed_and_valid(capsys):
    from ppdgm.compare import preset_spec

    for name in comparison_names():
        for budget in ("small", "full"):
            parse_spec(preset_spec(name, budget))
    assert main(["presets"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.split(" ")[0] in comparison_names()]
    assert len(lines) == len(comparison_names())
    assert all(line.count("2 CPU cores") == 1 for line in lines)  # the machine named once per preset


@pytest.mark.parametrize("preset", comparison_names())
def test_every_preset_runs_in_its_small_budget(tmp_path, preset, request):
    from dataclasses import replace

    from ppdgm.compare import preset_spec

    spec = parse_spec(preset_spec(preset, "small"), output=tmp_path)
    if spec.data == "binarized-mnist":
        spec = replace(spec, data_dir=str(request.getfixturevalue("shared_data_dir")))
    summary = compare(spec, progress=False)
    assert len(summary["rows"]) == len(preset_spec(preset)["methods"])
    assert all(np.isfinite(row[m]["mean"]) for row in summary["rows"] for m in summary["metrics"])
    if spec.reference:
        table = (tmp_path / "results.md").read_text()
        assert "Burda et al. 2016" in table and "| iwae k=50 |" in table and "-87.10 |" in table


def test_mixture_quality_counts_modes_and_high_quality_samples_exactly():
    import torch

    from ppdgm.data.named import mixture_centres
    from ppdgm.evaluate.likelihood import mixture_quality

    centres, std = mixture_centres("ring8")
    samples = torch.stack(
        [
            centres[0],
            centres[0] + torch.tensor([2.9 * std, 0.0]),  # inside 3 sigma
            centres[0] + torch.tensor([0.0, -1.0 * std]),
            centres[1] + torch.tensor([0.5 * std, 0.5 * std]),
            centres[2] + torch.tensor([3.1 * std, 0.0]),  # just outside: not high quality, mode 2 not covered
        ]
    )
    assert mixture_quality(samples, centres, std) == {"mode_coverage": 2.0, "high_quality_fraction": 0.8}
    assert mixture_quality(samples, centres, std, min_count=2)["mode_coverage"] == 1.0
    with pytest.raises(ValueError, match="samples must be"):
        mixture_quality(samples[:, :1], centres, std)


def test_two_dimensional_comparison_with_mixture_metrics_and_density_plot(tmp_path):
    raw = {
        "name": "ring",
        "output": str(tmp_path),
        "seeds": [0],
        "data": {"name": "ring8"},
        "model": {"preset": "linear-gaussian", "options": {"z_dim": 2}},
        "budget": {"steps": 30, "batch_size": 200, "lr": 1e-2},
        "evaluation": {"metrics": ["mode_coverage", "high_quality_fraction", "elbo"]},
        "methods": [{"name": "vae"}, {"name": "iwae", "options": {"num_particles": 4}}],
    }
    summary = compare(raw, progress=False)
    for row in summary["rows"]:
        assert 0 <= row["mode_coverage"]["mean"] <= 8 and 0 <= row["high_quality_fraction"]["mean"] <= 1
    assert (tmp_path / "samples_2d.png").exists()
    raw["data"] = {"name": "digits-binary"}
    with pytest.raises(SpecError, match=r"need a mixture data set"):
        parse_spec(raw)


def test_single_seed_tables_show_the_standard_error_over_the_test_set(tmp_path):
    raw = tiny_spec(tmp_path, metrics=("log_likelihood", "active_units"))
    raw["seeds"] = [4]
    summary = compare(raw, progress=False)
    spec = parse_spec(raw)
    stored = json.loads((run_dir(spec, spec.methods[0], 4) / "result.json").read_text())
    row = summary["rows"][0]
    assert row["log_likelihood"]["stderr"] == stored["stderr"]["log_likelihood"] > 0
    line = (tmp_path / "results.md").read_text().splitlines()[2]
    ll = stored["metrics"]["log_likelihood"]
    assert line.startswith(f"| vae | {ll:.3f} ± {stored['stderr']['log_likelihood']:.3f} | ")
    assert line.endswith(f"| {stored['metrics']['active_units']:.3f} |")  # no error bar where none is defined


def test_demo_command_runs_the_digits_preset(tmp_path, capsys):
    assert main(["demo", "--budget", "small", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "digits-small: mean ± standard deviation over 2 seeds" in out and "| iwae k=5 dreg |" in out
    assert (tmp_path / "samples.png").exists() and (tmp_path / "learning_curves.png").exists()


def test_typos_inside_spec_sections_are_named_with_a_suggestion(tmp_path):
    raw = tiny_spec(tmp_path)
    raw["budget"]["batchsize"] = 10
    raw["evaluation"]["num_sample"] = 5
    raw["methods"][0]["optoins"] = {}
    raw["data"]["path"] = "x"
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    message = str(err.value)
    assert "budget.batchsize: unknown field; did you mean 'batch_size'?" in message
    assert "evaluation.num_sample: unknown field; did you mean 'num_samples'?" in message
    assert "methods[0].optoins: unknown field; did you mean 'options'?" in message
    assert "data.path: unknown field (known: name, dir, columns, labelled, transform, fraction)" in message


def test_a_shipped_preset_is_printed_copied_edited_and_read_back(tmp_path, capsys):
    from ppdgm.compare import preset_spec

    assert main(["presets"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("aavae-mnist      AAVAE vs VAE")  # names padded to one column
    assert main(["presets", "digits"]) == 0
    text = capsys.readouterr().out
    assert 'description = "VAE vs IWAE' in text and "[budgets.small.budget]\nepochs = 5" in text
    mine = tmp_path / "mine.toml"
    mine.write_text(text.replace("[budgets.small.budget]\nepochs = 5", "[budgets.small.budget]\nepochs = 1"))
    spec = parse_spec(preset_spec(mine, "small"))
    assert spec.name == "mine-small" and spec.epochs == 1 and [m.label for m in spec.methods][1] == "iwae k=5"
    with pytest.raises(ValueError, match="unknown comparison preset 'nope'"):
        preset_spec("nope")


def test_a_time_estimate_measures_each_method_and_scales_to_the_budget(capsys):
    from ppdgm.compare import preset_spec
    from ppdgm.compare.runner import estimate

    spec = parse_spec({**preset_spec("paper-iwcgan", "small"), "seeds": [0, 1, 2]})
    rows = estimate(spec, steps=3)
    assert [r["method"] for r in rows] == ["cgan", "iw-cgan k=5"]
    for row in rows:
        assert row["steps_per_run"] == spec.steps and row["seconds_per_step"] > 0
        assert row["hours_all_seeds"] == pytest.approx(3 * row["seconds_per_step"] * spec.steps / 3600)
    assert main(["compare", "--preset", "digits", "--estimate", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| iwae k=5 |" in out and "h of training" in out


def test_a_full_budget_prints_its_measured_training_time_before_running(monkeypatch, capsys):
    ran = []
    monkeypatch.setattr("ppdgm.cli.main.compare", lambda spec, **kwargs: ran.append(spec.name))
    assert main(["compare", "--preset", "digits", "--budget", "full", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert ran == ["digits-full"]
    assert out.index("training time on this machine") < out.index("results, figures and record in")
    assert "| iwae k=5 |" in out and "| compiled |" in out and "h of training" in out


PAPER = "paper: Hu et al., On Unifying Deep Generative Models, ICLR 2018 version, Sec. 5"


@pytest.mark.parametrize(
    ("preset", "budget", "column"),
    [
        ("paper-aavae", "full", {"vae": "-92.53", "aa-vae": "-92.42"}),
        ("paper-aavae", "full-10", {"vae": "-104.49", "aa-vae": "-103.05"}),
        ("paper-aavae", "full-1", {"vae": "-122.89", "aa-vae": "-122.15"}),
        ("paper-aacvae", "full", {"cvae": "-93.16", "aa-cvae": "-92.75"}),
        ("paper-aacvae", "full-10", {"cvae": "-102.63", "aa-cvae": "-101.63"}),
        ("paper-aacvae", "full-1", {"cvae": "-125.44", "aa-cvae": "-122.88"}),
        ("paper-aasvae", "full-10", {"svae": "0.9768", "aa-svae": "0.9797"}),
        ("paper-iwgan", "full", {"gan": "8.34", "iwgan k=5": "8.45"}),
        ("paper-iwgan", "svhn", {"gan": "5.18", "iwgan k=5": "5.34"}),
        ("paper-iwcgan", "full", {"cgan": "0.985", "iw-cgan k=5": "0.987"}),
        ("paper-iwcgan", "svhn", {"cgan": "0.797", "iw-cgan k=5": "0.798"}),
        ("paper-aasvae", "full", {"svae": "0.9412", "aa-svae": "0.9425"}),
    ],
)
def test_the_paper_presets_print_the_papers_numbers_beside_ours(preset, budget, column):
    """The paper's table (ICLR 2018 version, Sec. 5) is the reference column of each paper preset's paper budget."""
    from ppdgm.compare import preset_spec
    from ppdgm.compare.report import format_table

    spec = parse_spec(preset_spec(preset, budget), output="unused")
    assert spec.reference["source"].startswith(PAPER)
    entry = {"mean": -1.0, "std": 0.1, "values": [-1.1, -0.9]}
    summary = {"metrics": list(spec.metrics), "rows": [{"method": m.label, **dict.fromkeys(spec.metrics, entry)}
                                                       for m in spec.methods], "reference": spec.reference}  # fmt: skip
    lines = format_table(summary).splitlines()
    assert lines[0].endswith(f"| {spec.reference['metric']}: {spec.reference['source']} |")
    for label, value in column.items():
        assert any(line.startswith(f"| {label} |") and line.endswith(f"| {value} |") for line in lines), (label, lines)
    assert parse_spec(preset_spec(preset, "small"), output="unused").reference == {}  # other data: no reference


def test_the_judge_is_a_convnet_trained_once_per_data_folder_and_its_worth_is_printed(tmp_path, monkeypatch):
    """The classifier that scores samples is trained once and cached in the data folder (keyed by the training rows);
    a later comparison loads it; every table it judges says its test accuracy and the real rows' inception score on
    the same scale."""
    from ppdgm import evaluate
    from ppdgm.compare import metrics

    monkeypatch.setenv("PPDGM_DATA", str(tmp_path / "data"))
    metrics.data_classifier.cache_clear()
    raw = tiny_spec(tmp_path / "one", ("inception_score", "class_coverage"))
    raw["methods"], raw["seeds"], raw["budget"]["steps"] = raw["methods"][:1], [0], 2
    compare(raw, progress=False)
    cached = list((tmp_path / "data" / "ppdgm-judges").glob("digits-binary-convnet-*.pt"))
    assert len(cached) == 1
    table = (tmp_path / "one" / "results.md").read_text()
    line = table.strip().splitlines()[-1]
    assert line.startswith("samples judged by a convnet (40 epochs) classifier of digits-binary: ")
    accuracy = float(line.split(": ")[1].split("%")[0]) / 100
    assert accuracy > 0.9  # the embedded digits' judge; MNIST's is checked in the slow test
    assert "real test rows score inception score" in line and "(297 rows in 10 splits; the samples: 2000 in" in line

    real = evaluate.train_judge

    def architecture_only(x, labels, shape, epochs=4, **options):
        assert epochs == 0, "the cached judge was trained again"
        return real(x, labels, shape, epochs=0, **options)

    metrics.data_classifier.cache_clear()
    monkeypatch.setattr(evaluate, "train_judge", architecture_only)
    compare({**raw, "output": str(tmp_path / "two")}, progress=False)
    assert (tmp_path / "two" / "results.md").read_text().strip().splitlines()[-1] == line
    metrics.data_classifier.cache_clear()


def test_missing_inception_weights_are_refused_before_any_run_trains(tmp_path):
    from ppdgm.errors import MissingResourceError

    raw = tiny_spec(tmp_path / "cmp", ("inception_score",))
    raw["evaluation"]["inception_weights"] = str(tmp_path / "missing.pth")
    with pytest.raises(MissingResourceError, match=r"Inception weights .*missing\.pth not found"):
        compare(raw, progress=False)
    assert not (tmp_path / "cmp" / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])  # one thread: a judge trained inside `--jobs 2`
def test_the_mnist_judge_classifies_99_percent_of_the_test_digits(tmp_path, threads):
    from ppdgm import evaluate
    from ppdgm.compare import metrics
    from ppdgm.data.named import load
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"labelled MNIST not found at {SHARED_DATA / 'MNIST' / 'raw'}")
    mnist = load("mnist", SHARED_DATA)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # float reductions, and so the judge, depend on the thread count
    try:
        net, info = metrics.judge(mnist, "mnist", str(tmp_path))  # a fresh judge, cached in tmp_path
    finally:
        torch.set_num_threads(before)
    assert info["test_accuracy"] >= 0.99, info
    assert evaluate.accuracy(net, mnist.tensor("test"), mnist.labels["test"]) == info["test_accuracy"]


def test_a_result_judged_by_another_judge_is_evaluated_again(tmp_path):
    """Samples scored by an earlier judge are not mixed into a table scored by the current one."""
    from ppdgm.compare.metrics import JUDGE_VERSION
    from ppdgm.compare.runner import reusable

    judged = parse_spec(tiny_spec(tmp_path, ("inception_score",)), output=tmp_path)
    plain = parse_spec(tiny_spec(tmp_path, DETERMINISTIC), output=tmp_path)
    assert reusable({"spec_hash": judged.digest(), "judge": JUDGE_VERSION}, judged)
    assert not reusable({"spec_hash": judged.digest()}, judged)  # a result from before the convnet judge
    assert reusable({"spec_hash": plain.digest()}, plain)
    assert not reusable({"spec_hash": "another", "judge": JUDGE_VERSION}, judged)


def _two_method_summary(base: list[float], other: list[float], paper: tuple[float, float]) -> dict:
    rows = []
    for label, values in (("vae", base), ("aa-vae", other)):
        rows.append({"method": label, "seeds": list(range(len(values))), "elbo": {"values": values}})
    reference = {"metric": "elbo", "source": "paper", "values": {"vae": paper[0], "aa-vae": paper[1]}}
    return {"metrics": ["elbo"], "rows": rows, "reference": reference}


@pytest.mark.parametrize(
    "base, other, word, ahead",
    [
        ([-100.0, -101.0, -99.0], [-99.0, -99.5, -98.0], "reproduces", 3),  # differences 1, 1.5, 1
        ([-100.0, -101.0, -99.0], [-99.0, -102.0, -98.5], "same direction, within the spread over seeds", 2),
        ([-100.0, -101.0, -99.0], [-101.0, -102.5, -100.0], "reversed", 0),
        ([-100.0, -101.0, -99.0], [-101.0, -100.0, -99.5], "opposite direction, within the spread over seeds", 1),
    ],
)
def test_the_verdict_pairs_seeds_and_weighs_the_difference_against_its_spread(base, other, word, ahead):
    from ppdgm.compare.report import paper_verdict

    line = paper_verdict(_two_method_summary(base, other, (-92.53, -92.42)))
    diffs = np.array(other) - np.array(base)
    assert line == (
        f"paper's gain, aa-vae − vae in elbo: +0.11; ours, paired over the same 3 seed(s): {diffs.mean():+.3g} ± "
        f"{diffs.std(ddof=1):.3g} (the paper's direction on {ahead} of 3): {word}"
    )


def test_no_verdict_without_a_reference_for_two_methods():
    from ppdgm.compare.report import paper_verdict

    summary = _two_method_summary([-1.0, -2.0], [-1.5, -1.0], (-92.53, -92.42))
    del summary["reference"]["values"]["aa-vae"]
    assert paper_verdict(summary) is None


def test_the_convergence_line_says_whether_the_validation_objective_flattened():
    from ppdgm.compare.report import convergence_line

    spec = parse_spec(tiny_spec("unused"), output="unused")
    rising = [{"valid_elbo": -100.0 + epoch} for epoch in range(20)]  # +1 an epoch to the end
    flat = [{"valid_elbo": -100.0 + min(epoch, 10) * 5} for epoch in range(20)]  # +50, then nothing
    falling = [{"valid_elbo": -100.0 + min(epoch, 15) * 2 - max(0, epoch - 15)} for epoch in range(20)]
    results = [
        {"label": "vae", "history": rising, "seed": 0},
        {"label": "iwae k=3", "history": flat, "seed": 0},
    ]
    line = convergence_line(spec, results)
    assert line == (
        "validation objective over the last 10% of the epochs, mean over seeds: vae +1 (of +19 in all): rising; "
        "iwae k=3 +0 (of +50 in all): flat"
    )
    line = convergence_line(spec, [{"label": "vae", "history": falling, "seed": 0}])
    assert line.endswith("vae -1 (of +26 in all): falling")

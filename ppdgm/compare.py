"""Paper-style comparisons: methods x seeds on one model and data set -> a table, figures, a record.

A comparison is described by a spec (a TOML file, or the same structure as a dict)::

    name = "digits"
    output = "runs/compare-digits"
    seeds = [0, 1, 2]

    [data]
    name = "digits-binary"          # any ppdgm.data name; `dir = "..."` for a data directory

    [model]
    preset = "vae-mlp"              # a ppdgm.presets name, or `factory = "module:function"`
    options = { z_dim = 10, hidden = [128] }   # returning (model, guide) from (x_dim, **options)

    [budget]
    epochs = 100                    # or steps = ...
    batch_size = 100
    lr = 3e-3

    [evaluation]
    metrics = ["log_likelihood", "elbo", "active_units"]
    num_samples = 1000              # importance samples for log_likelihood
    iwae_k = 50                     # k of the iwae_bound metric

    [[methods]]
    name = "vae"

    [[methods]]
    name = "iwae"
    label = "iwae k=5"
    options = { num_particles = 5 }

Every method x seed is an independent run (its own folder with config, history CSV, checkpoint,
parameters, samples and metrics), skipped when already complete, so an interrupted comparison
resumes where it stopped. ``--jobs N`` runs N at once in separate processes; a top-level
``nproc_per_run = N`` trains each run data-parallel on N ranks (``torchrun``; the same result as one
process to float tolerance, see :mod:`ppdgm.distributed`), then evaluates it on rank 0. The results table
(rows methods, columns metrics, mean ± std over seeds) is printed and written as Markdown, CSV and
JSON, beside learning curves, sample grids and a record (spec, spec hash, package versions, device,
git commit) that ``ppdgm compare --rerun RECORD`` repeats.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import os
import platform
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

METRICS = (
    "log_likelihood",
    "elbo",
    "iwae_bound",
    "exact_log_likelihood",
    "active_units",
    "seconds_per_epoch",
    "mode_coverage",
    "high_quality_fraction",
    "kl_true_model",
    "inception_score",
    "class_coverage",
    "objective",
)
MIXTURE_METRICS = ("mode_coverage", "high_quality_fraction", "kl_true_model")
CLASSIFIER_METRICS = ("inception_score", "class_coverage")
CLASSIFIER_SAMPLES = 2000
MIXTURE_SAMPLES = 2500
RESULT = "result.json"


class SpecError(ValueError):
    """A comparison spec has bad fields; the message lists every one."""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    """A validated comparison spec (see the module docstring for the format)."""

    name: str
    output: str
    seeds: tuple[int, ...]
    data: str
    data_dir: str | None
    model: str
    model_options: dict[str, Any]
    methods: tuple[MethodSpec, ...]
    epochs: int | None
    steps: int | None
    batch_size: int
    lr: float
    metrics: tuple[str, ...]
    num_samples: int
    iwae_k: int
    device: str = "cpu"
    nproc_per_run: int = 1
    lr_schedule: str | None = None
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    test_size: int | None = None
    reference: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Spec:
        """Inverse of :meth:`to_dict`, also after a JSON round trip (lists back to tuples)."""
        values = dict(data)
        values["methods"] = tuple(m if isinstance(m, MethodSpec) else MethodSpec(**m) for m in values["methods"])
        values["seeds"], values["metrics"] = tuple(values["seeds"]), tuple(values["metrics"])
        return cls(**values)

    def digest(self) -> str:
        """A hash of everything that determines the results (the output folder excluded)."""
        content = {k: v for k, v in self.to_dict().items() if k != "output"}
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def parse_spec(raw: Mapping[str, Any] | str | Path, output: str | Path | None = None) -> Spec:
    """Validate a spec given as a dict or a TOML file; raise :class:`SpecError` listing every bad field."""
    from ppdgm.data import available_datasets
    from ppdgm.method import get_method
    from ppdgm.presets import PRESETS

    if not isinstance(raw, Mapping):
        path = Path(raw)
        if not path.exists():
            raise SpecError(f"spec file {path} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise SpecError(f"{path} is not valid TOML: {err}") from None
    errors: list[str] = []
    known = {
        "name", "output", "seeds", "data", "model", "budget", "evaluation", "methods", "device", "nproc_per_run",
        "reference",
    }  # fmt: skip
    errors += [f"{key}: unknown field (known: {', '.join(sorted(known))})" for key in raw if key not in known]

    def positive_int(where: str, value: Any) -> None:
        if not _positive_int(value):
            errors.append(f"{where}: must be a positive integer, got {value!r}")

    def options_table(where: str, value: Any) -> Mapping[str, Any] | None:
        if isinstance(value, Mapping):
            return value
        errors.append(f"{where}: must be a table")
        return None

    def table(key: str) -> Mapping[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, Mapping):
            errors.append(f"{key}: must be a table")
            return {}
        return value

    name = raw.get("name", "comparison")
    if not isinstance(name, str) or not name:
        errors.append("name: must be a non-empty string")
    seeds = raw.get("seeds", [0])
    integers = isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not integers or not seeds:
        errors.append("seeds: must be a non-empty list of integers")
        seeds = []
    elif any(s < 0 for s in seeds):
        errors.append(f"seeds: must not be negative, got {seeds}")
    elif len(set(seeds)) != len(seeds):
        errors.append(f"seeds: repeated seeds {seeds}")
    data = table("data")
    data_name = data.get("name")
    if data_name not in available_datasets():
        errors.append(f"data.name: unknown data set {data_name!r}; known: {', '.join(available_datasets())}")
    data_dir = data.get("dir")
    if data_dir is not None and not isinstance(data_dir, str):
        errors.append("data.dir: must be a path string")
    model = table("model")
    model_name = model.get("preset") or model.get("factory")
    if model.get("preset") and model.get("factory"):
        errors.append("model: give preset or factory, not both")
    elif model.get("factory"):
        if not isinstance(model_name, str) or ":" not in model_name:
            errors.append("model.factory: must be 'module:function'")
    elif model_name not in PRESETS:
        errors.append(f"model.preset: unknown model {model_name!r}; known: {', '.join(sorted(PRESETS))}")
    model_options = options_table("model.options", model.get("options", {})) or {}
    budget = table("budget")
    epochs, steps = budget.get("epochs"), budget.get("steps")
    if (epochs is None) == (steps is None):
        errors.append("budget: give exactly one of epochs or steps")
    for key, value in (("epochs", epochs), ("steps", steps)):
        if value is not None:
            positive_int(f"budget.{key}", value)
    batch_size = budget.get("batch_size", 100)
    positive_int("budget.batch_size", batch_size)
    lr = budget.get("lr", 1e-3)
    if not isinstance(lr, int | float) or isinstance(lr, bool) or lr <= 0:
        errors.append(f"budget.lr: must be a positive number, got {lr!r}")
    lr_schedule = budget.get("lr_schedule")
    if lr_schedule is not None:
        from ppdgm.train import schedule_names

        known = schedule_names()
        if lr_schedule not in known:
            errors.append(f"budget.lr_schedule: unknown {lr_schedule!r}; known: {', '.join(known)}")
    optimizer_options = options_table("budget.optimizer_options", budget.get("optimizer_options", {})) or {}
    evaluation = table("evaluation")
    test_size = evaluation.get("test_size")
    if test_size is not None:
        positive_int("evaluation.test_size", test_size)
    metrics = evaluation.get("metrics", ["log_likelihood"])
    if not isinstance(metrics, list) or not metrics:
        errors.append("evaluation.metrics: must be a non-empty list")
        metrics = []
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        errors.append(f"evaluation.metrics: unknown {bad}; known: {', '.join(METRICS)}")
    if set(metrics) & set(MIXTURE_METRICS) and data_name not in ("ring8", "grid25"):
        errors.append(f"evaluation.metrics: {list(MIXTURE_METRICS)} need a mixture data set (ring8, grid25)")
    if set(metrics) & set(CLASSIFIER_METRICS) and data_name not in ("digits", "digits-binary"):
        errors.append(
            f"evaluation.metrics: {list(CLASSIFIER_METRICS)} need a labelled data set (digits, digits-binary)"
        )
    num_samples = evaluation.get("num_samples", 1000)
    positive_int("evaluation.num_samples", num_samples)
    iwae_k = evaluation.get("iwae_k", 50)
    positive_int("evaluation.iwae_k", iwae_k)
    methods_raw = raw.get("methods", [])
    methods: list[MethodSpec] = []
    if not isinstance(methods_raw, list) or not methods_raw:
        errors.append("methods: must be a non-empty list of [[methods]] tables")
        methods_raw = []
    for i, entry in enumerate(methods_raw):
        where = f"methods[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            errors.append(f"{where}.name: must be a method name")
            continue
        options = options_table(f"{where}.options", entry.get("options", {}))
        if options is None:
            continue
        try:
            get_method(entry["name"], **options)
        except (ValueError, TypeError) as err:
            errors.append(f"{where}: {err}")
            continue
        label = entry.get("label", entry["name"])
        methods.append(MethodSpec(entry["name"], str(label), dict(options)))
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        errors.append(f"methods: labels must be unique, got {labels} (set label = ...)")
    device = raw.get("device", "cpu")
    if not isinstance(device, str):
        errors.append("device: must be a string")
    nproc_per_run = raw.get("nproc_per_run", 1)
    positive_int("nproc_per_run", nproc_per_run)
    reference = table("reference")
    if reference:
        ref_values = reference.get("values", {})
        if reference.get("metric") not in metrics:
            errors.append(f"reference.metric: must be one of the evaluated metrics {metrics}")
        if not isinstance(reference.get("source"), str):
            errors.append("reference.source: must say where the reference numbers come from")
        if not isinstance(ref_values, Mapping) or not all(isinstance(v, int | float) for v in ref_values.values()):
            errors.append("reference.values: must be a table of method label = number")
        elif set(ref_values) - set(labels):
            errors.append(f"reference.values: labels {sorted(set(ref_values) - set(labels))} are no method's label")
    if errors:
        raise SpecError("bad comparison spec:\n  " + "\n  ".join(errors))
    return Spec(
        name=name,
        output=str(output or raw.get("output") or Path("runs") / f"compare-{name}"),
        seeds=tuple(seeds),
        data=data_name,
        data_dir=data_dir,
        model=model_name,
        model_options=dict(model_options),
        methods=tuple(methods),
        epochs=epochs,
        steps=steps,
        batch_size=batch_size,
        lr=float(lr),
        metrics=tuple(metrics),
        num_samples=num_samples,
        iwae_k=iwae_k,
        device=device,
        nproc_per_run=nproc_per_run,
        lr_schedule=lr_schedule,
        optimizer_options=dict(optimizer_options),
        test_size=test_size,
        reference=dict(reference),
    )


def build_pair(spec: Spec, x_dim: int) -> tuple[Callable, Callable]:
    """A fresh (model, guide) pair for the spec: a preset, or a user factory ``module:function``."""
    if ":" in spec.model:
        module_name, function_name = spec.model.split(":", 1)
        factory = getattr(importlib.import_module(module_name), function_name)
        return factory(x_dim, **spec.model_options)
    from ppdgm.presets import build

    return build(spec.model, x_dim, **spec.model_options)


# ---------------------------------------------------------------------------------------------- metrics
def evaluate_run(
    spec: Spec, model: Callable, guide: Callable, test: torch.Tensor, history: Sequence[dict]
) -> tuple[dict[str, float], dict[str, float]]:
    """The spec's metrics for one trained run on the test split, and the standard errors (over the
    test datapoints) of those that are averages over it."""
    from ppdgm import evaluate
    from ppdgm.data import mixture_centres
    from ppdgm.sampling import generate

    out: dict[str, float] = {}
    stderr: dict[str, float] = {}
    if set(spec.metrics) & set(MIXTURE_METRICS):
        centres, std = mixture_centres(spec.data)
        samples = generate(model, MIXTURE_SAMPLES, mean=False).reshape(MIXTURE_SAMPLES, -1)
        out.update(evaluate.mixture_quality(samples, centres, std))
        if "kl_true_model" in spec.metrics:
            from ppdgm.data import mixture_log_density

            out["kl_true_model"] = evaluate.mixture_kl(samples, test, mixture_log_density(spec.data), bandwidth=std)
    if set(spec.metrics) & set(CLASSIFIER_METRICS):
        from ppdgm.data import load

        labelled = load(spec.data, spec.data_dir)
        classifier = evaluate.train_classifier(labelled.train, labelled.labels["train"])
        samples = generate(model, CLASSIFIER_SAMPLES).reshape(CLASSIFIER_SAMPLES, -1).cpu()
        out.update(evaluate.classifier_scores(classifier, samples))
    estimators = {
        "log_likelihood": lambda: evaluate.log_likelihood(model, guide, test, num_samples=spec.num_samples),
        "elbo": lambda: evaluate.elbo(model, guide, test),
        "iwae_bound": lambda: evaluate.iwae_bound(model, guide, test, k=spec.iwae_k),
        "exact_log_likelihood": lambda: evaluate.exact_log_likelihood(model, test),
    }
    for metric in spec.metrics:
        if metric in estimators:
            estimate = estimators[metric]()
            out[metric], stderr[metric] = estimate.mean, estimate.stderr
        elif metric == "active_units":
            out[metric] = float(evaluate.active_units(model, guide, test))
        elif metric == "seconds_per_epoch":
            out[metric] = float(np.mean([row["seconds"] for row in history]))
    return {metric: out[metric] for metric in spec.metrics if metric in out}, stderr


# ---------------------------------------------------------------------------------------------- runs
def run_dir(spec: Spec, method: MethodSpec, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in method.label)
    return Path(spec.output) / "runs" / f"{safe}-seed{seed}"


def run_one(spec_dict: dict, method_index: int, seed: int, tensorboard: bool = False) -> dict:
    """Train and evaluate one method x seed (in this process); skip it when its result exists."""
    spec = Spec.from_dict(spec_dict)
    method = spec.methods[method_index]
    folder = run_dir(spec, method, seed)
    done = folder / RESULT
    if done.exists():
        result = json.loads(done.read_text())
        if result.get("spec_hash") == spec.digest():
            return result
    folder.mkdir(parents=True, exist_ok=True)
    if spec.nproc_per_run > 1:
        return _launch_distributed(spec, method_index, seed, folder, tensorboard)
    return _deterministic_run(spec, method, seed, folder, tensorboard)


def _deterministic_run(spec: Spec, method: MethodSpec, seed: int, folder: Path, tensorboard: bool) -> dict:
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train_and_evaluate(spec, method, seed, folder, tensorboard)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _launch_distributed(spec: Spec, method_index: int, seed: int, folder: Path, tensorboard: bool) -> dict:
    """Train one run on ``spec.nproc_per_run`` ranks with torchrun (rank 0 evaluates), then read its result."""
    spec_file = folder / "spec.json"
    spec_file.write_text(json.dumps(spec.to_dict(), default=str))
    threads = max(1, torch.get_num_threads() // spec.nproc_per_run)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(spec.nproc_per_run),
        "-m", "ppdgm.compare_worker", str(spec_file), str(method_index), str(seed),
        *(["--tensorboard"] if tensorboard else []),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log = folder / "torchrun.log"
    with open(log, "w") as out:
        code = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0 or not (folder / RESULT).exists():
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        where = f"the {spec.nproc_per_run}-process run in {folder}"
        raise RuntimeError(f"{where} failed (exit {code}); {log} ends:\n{tail}")
    return json.loads((folder / RESULT).read_text())


def _train_and_evaluate(spec: Spec, method: MethodSpec, seed: int, folder: Path, tensorboard: bool) -> dict:
    import ppdgm
    from ppdgm import distributed
    from ppdgm.sampling import generate, save_image_grid

    done = folder / RESULT
    dataset = ppdgm.data.load(spec.data, spec.data_dir)
    torch.manual_seed(seed)  # the same initial networks for every method of a seed
    model, guide = build_pair(spec, dataset.dim)
    config = {
        "method": method.name,
        "label": method.label,
        "options": method.options,
        "seed": seed,
        "spec_hash": spec.digest(),
    }
    main = distributed.is_main()
    if main:
        (folder / "config.json").write_text(json.dumps(config, indent=2, default=str))
    budget = {"epochs": spec.epochs} if spec.epochs is not None else {"steps": spec.steps}
    callbacks = []
    if tensorboard and main:
        from ppdgm.tensorboard import TensorBoardLogger

        callbacks.append(TensorBoardLogger(folder / "tensorboard", model=model, image_shape=dataset.image_shape))
    run = ppdgm.fit(
        model,
        guide,
        dataset,
        method.name,
        batch_size=spec.batch_size,
        lr=spec.lr,
        seed=seed,
        device=spec.device,
        checkpoint_dir=folder,
        progress=False,
        lr_schedule=spec.lr_schedule,
        optimizer_options=spec.optimizer_options or None,
        callbacks=callbacks,
        **budget,
        **method.options,
    )
    for callback in callbacks:
        callback.close()
    if distributed.world_size() > 1:  # trained data-parallel: rank 0 evaluates alone
        torch.distributed.destroy_process_group()
        if not main:
            return {}
    run.save(folder / "params.pt")
    run.save_history(folder / "history.csv")
    torch.manual_seed(seed)
    test = dataset.test if spec.test_size is None else dataset.test[: spec.test_size]
    metrics, stderr = evaluate_run(spec, model, guide, test, run.history)
    if "objective" in spec.metrics:  # the method's own objective on the test split (e.g. -cycle error)
        from ppdgm.train import validation_objective

        with run.params():
            metrics["objective"] = validation_objective(run.method, run.programs, test.to(run.device))
    torch.manual_seed(seed)
    if dataset.image_shape is not None:
        save_image_grid(generate(model, 64), dataset.image_shape, folder / "samples.png")
    elif dataset.dim == 2:
        np.save(folder / "samples.npy", generate(model, 1000, mean=False).reshape(1000, 2).cpu().numpy())
    result = {
        "label": method.label,
        "seed": seed,
        "metrics": metrics,
        "stderr": stderr,
        "history": run.history,
        "spec_hash": spec.digest(),
    }
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(done)
    return result


def compare(
    spec: Spec | Mapping[str, Any] | str | Path,
    *,
    jobs: int = 1,
    progress: bool = True,
    on_run_done: Callable[[dict], Any] | None = None,
    tensorboard: bool = False,
) -> dict:
    """Run every method x seed of ``spec`` (skipping completed runs) and write the results.

    Returns the results dict that is also written as ``results.json``.
    """
    spec = spec if isinstance(spec, Spec) else parse_spec(spec)
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "record.json").write_text(json.dumps(run_record(spec), indent=2))
    grid = [(i, seed) for i in range(len(spec.methods)) for seed in spec.seeds]
    spec_dict = spec.to_dict()
    results: list[dict] = []
    bar = tqdm(total=len(grid), desc=f"compare {spec.name}", unit="run", disable=not progress, file=sys.stderr)
    if jobs == 1:
        for i, seed in grid:
            bar.set_postfix_str(f"{spec.methods[i].label} seed {seed}")
            results.append(run_one(spec_dict, i, seed, tensorboard))
            bar.update(1)
            if on_run_done is not None:
                on_run_done(results[-1])
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)  # jobs x threads within the cores: no oversubscription
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=get_context("spawn"), initializer=torch.set_num_threads, initargs=(threads,)
        ) as pool:
            futures = [pool.submit(run_one, spec_dict, i, seed, tensorboard) for i, seed in grid]
            for future in futures:
                results.append(future.result())
                bar.update(1)
                if on_run_done is not None:
                    on_run_done(results[-1])
    bar.close()
    summary = summarise(spec, results)
    write_results(spec, summary, results)
    return summary


# ---------------------------------------------------------------------------------------------- results
def summarise(spec: Spec, results: Sequence[dict]) -> dict:
    """Mean and standard deviation (ddof=1; 0 for one seed) of every metric per method, over seeds."""
    rows = []
    for method in spec.methods:
        runs = sorted((r for r in results if r["label"] == method.label), key=lambda r: r["seed"])
        row: dict[str, Any] = {"method": method.label, "seeds": [r["seed"] for r in runs]}
        for metric in spec.metrics:
            values = np.array([r["metrics"][metric] for r in runs], dtype=np.float64)
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            row[metric] = {"mean": float(values.mean()), "std": std, "values": values.tolist()}
            errors = [r.get("stderr", {}).get(metric) for r in runs]
            if len(runs) == 1 and errors[0] is not None:
                row[metric]["stderr"] = errors[0]
        rows.append(row)
    summary = {"name": spec.name, "spec_hash": spec.digest(), "metrics": list(spec.metrics), "rows": rows}
    if spec.reference:
        summary["reference"] = spec.reference
    return summary


def format_table(summary: dict) -> str:
    metrics = summary["metrics"]
    reference = summary.get("reference")
    header = list(metrics) + ([f"{reference['metric']}: {reference['source']}"] if reference else [])
    lines = ["| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for row in summary["rows"]:
        cells = [_cell(row[m]) for m in metrics]
        if reference:
            value = reference.get("values", {}).get(row["method"])
            cells.append("—" if value is None else f"{value:.2f}")
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(entry: dict) -> str:
    """mean ± std over seeds; with one seed, mean ± standard error over the test set (or the mean alone)."""
    if len(entry["values"]) > 1:
        return f"{entry['mean']:.3f} ± {entry['std']:.3f}"
    if "stderr" in entry:
        return f"{entry['mean']:.3f} ± {entry['stderr']:.3f}"
    return f"{entry['mean']:.3f}"


def table_caption(spec: Spec) -> str:
    if len(spec.seeds) > 1:
        return f"{spec.name}: mean ± standard deviation over {len(spec.seeds)} seeds"
    subset = f"first {spec.test_size} " if spec.test_size else ""
    return f"{spec.name}: one seed; ± standard error over the {subset}test datapoints"


def write_results(spec: Spec, summary: dict, results: Sequence[dict]) -> None:
    out = Path(spec.output)
    table = format_table(summary)
    print(f"\n{table_caption(spec)}\n{table}")
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method"] + [f"{m}_{s}" for m in summary["metrics"] for s in ("mean", "std")])
        for row in summary["rows"]:
            writer.writerow([row["method"]] + [row[m][s] for m in summary["metrics"] for s in ("mean", "std")])
    plot_learning_curves(spec, results, out / "learning_curves.png")
    plot_sample_grids(spec, out / "samples.png")
    plot_samples_over_density(spec, out / "samples_2d.png")


def plot_learning_curves(spec: Spec, results: Sequence[dict], path: Path) -> None:
    """The validation (or training) objective per method: mean over seeds with a min-max band,
    against steps and against wall-clock seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in spec.methods:
        runs = [r for r in results if r["label"] == method.label]
        key = next((k for k in runs[0]["history"][-1] if k.startswith("valid_")), None)
        key = key or next(k for k in runs[0]["history"][-1] if k.startswith("train_"))
        length = min(len(r["history"]) for r in runs)
        values = np.array([[row[key] for row in r["history"][:length]] for r in runs])
        steps = np.array([row["step"] for row in runs[0]["history"][:length]])
        seconds = np.cumsum(np.array([[row["seconds"] for row in r["history"][:length]] for r in runs]), 1).mean(0)
        for ax, x in zip(axes, (steps, seconds)):
            ax.plot(x, values.mean(0), label=f"{method.label} ({key})")
            ax.fill_between(x, values.min(0), values.max(0), alpha=0.25)
    axes[0].set_xlabel("steps")
    axes[1].set_xlabel("wall-clock seconds")
    for ax in axes:
        ax.set_ylabel("objective (nats)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{spec.name}: mean over {len(spec.seeds)} seed(s), band min-max")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sample_grids(spec: Spec, path: Path) -> None:
    """One row of sample images per method (from each method's first seed), when the data are images."""
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    grids = [(m.label, run_dir(spec, m, spec.seeds[0]) / "samples.png") for m in spec.methods]
    grids = [(label, p) for label, p in grids if p.exists()]
    if not grids:
        return
    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 3.4), squeeze=False)
    for ax, (label, p) in zip(axes[0], grids):
        ax.imshow(mpimg.imread(p))
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples_over_density(spec: Spec, path: Path) -> None:
    """For 2-D data with a known density: each method's samples (first seed) over the true log density."""
    from ppdgm.data import load
    from ppdgm.sampling import plot_samples_2d

    runs = [(m.label, run_dir(spec, m, spec.seeds[0]) / "samples.npy") for m in spec.methods]
    panels = [(label, torch.from_numpy(np.load(p))) for label, p in runs if p.exists()]
    dataset = load(spec.data, spec.data_dir)
    if not panels or dataset.log_density is None:
        return
    plot_samples_2d(panels, dataset, path, title=f"{spec.name}: samples (red) over the true density")


# ---------------------------------------------------------------------------------------------- record
def _git_state() -> dict[str, Any]:
    """The commit of the checkout ppdgm runs from, and whether it had uncommitted changes."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit or None, "git_dirty": bool(status) if status is not None else None}


def run_record(spec: Spec) -> dict:
    """Everything needed to rerun the comparison and to know what it ran on."""
    import pyro

    import ppdgm

    device = spec.device
    if device.startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "spec": spec.to_dict(),
        "spec_hash": spec.digest(),
        "versions": {
            "ppdgm": ppdgm.__version__,
            "pyro": pyro.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "device": {"name": device, "detail": device_name, "torch_threads": torch.get_num_threads()},
        **_git_state(),
        "seeds": list(spec.seeds),
    }


def spec_from_record(path: str | Path, output: str | Path | None = None) -> Spec:
    """The spec stored in a ``record.json``, for ``ppdgm compare --rerun``."""
    record = json.loads(Path(path).read_text())
    spec = Spec.from_dict(record["spec"])
    if output is not None:
        spec = replace(spec, output=str(output))
    if spec.digest() != record["spec_hash"]:
        raise SpecError(f"{path}: the stored spec does not match its hash; the record was edited")
    return spec

"""The comparison spec: its dataclasses and its validation, one function per section.

Each section (``data``, ``model``, ``budget``, ``evaluation``, ``methods``, ``reference``) checks its own
fields and rejects unknown ones, so a typo is an error naming it with a "did you mean"; every error of a
spec is collected and reported at once by :class:`SpecError`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ppdgm.compare.metrics import CLASSIFIER_METRICS, LABELLED_DATA, METRICS, MIXTURE_METRICS
from ppdgm.data.images import COLUMNS
from ppdgm.data.named import available_datasets, is_fraction
from ppdgm.data.transforms import TRANSFORMS
from ppdgm.errors import PpdgmError, positive_int
from ppdgm.methods.base import get_method
from ppdgm.training.config import TrainingConfig
from ppdgm.training.schedules import schedule_names
from ppdgm.zoo import MODELS


class SpecError(PpdgmError, ValueError):
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
    data_options: dict[str, Any] = field(default_factory=dict)
    transform: str | None = None
    inception_weights: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Spec:
        """Inverse of :meth:`to_dict`, also after a JSON round trip (lists back to tuples)."""
        values = dict(data)
        values["methods"] = tuple(m if isinstance(m, MethodSpec) else MethodSpec(**m) for m in values["methods"])
        values["seeds"], values["metrics"] = tuple(values["seeds"]), tuple(values["metrics"])
        return cls(**values)

    def training_config(self, method: MethodSpec, seed: int, **options: Any) -> TrainingConfig:
        """The fit of ``method`` at ``seed`` under this spec; ``options`` set the fit's other fields (the run folder,
        callbacks, progress)."""
        budget = {"epochs": self.epochs} if self.epochs is not None else {"steps": self.steps}
        settings = dict(
            batch_size=self.batch_size,
            lr=self.lr,
            seed=seed,
            device=self.device,
            lr_schedule=self.lr_schedule,
            optimizer_options=self.optimizer_options or None,
            **budget,
        )
        return TrainingConfig.of(**{**settings, **options}, **method.options)

    def digest(self) -> str:
        """A hash of everything that determines the results (the output folder excluded)."""
        content = {k: v for k, v in self.to_dict().items() if k != "output"}
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_dir(spec: Spec, method: MethodSpec, seed: int) -> Path:
    """The folder of one method x seed run of a comparison."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in method.label)
    return Path(spec.output) / "runs" / f"{safe}-seed{seed}"


class _Checks:
    """Collects the errors of one spec."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def add(self, message: str) -> None:
        self.errors.append(message)

    def known(self, where: str, table: Mapping[str, Any], fields: tuple[str, ...]) -> None:
        for key in table:
            if key not in fields:
                close = difflib.get_close_matches(str(key), fields, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(fields)})"
                self.add(f"{where}{key}: unknown field{hint}")

    def table(self, where: str, value: Any, fields: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.add(f"{where}: must be a table")
            return {}
        self.known(f"{where}.", value, fields)
        return value

    def options(self, where: str, value: Any) -> Mapping[str, Any] | None:
        if isinstance(value, Mapping):
            return value
        self.add(f"{where}: must be a table")
        return None

    def positive_int(self, where: str, value: Any) -> None:

        if isinstance(value, float):  # TOML's 5.0 is a float: a count must be written as an integer
            self.add(f"{where}: must be a positive integer, got {value!r}")
            return
        try:
            positive_int(where, value)
        except ValueError as err:
            self.add(str(err).replace(f"{where} must", f"{where}: must", 1))


TOP = (
    "name", "output", "seeds", "data", "model", "budget", "evaluation", "methods", "device", "nproc_per_run",
    "reference",
)  # fmt: skip


def _seeds(checks: _Checks, seeds: Any) -> list[int]:
    integers = isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not integers or not seeds:
        checks.add("seeds: must be a non-empty list of integers")
        return []
    if any(s < 0 for s in seeds):
        checks.add(f"seeds: must not be negative, got {seeds}")
    elif len(set(seeds)) != len(seeds):
        checks.add(f"seeds: repeated seeds {seeds}")
    return seeds


def _data(checks: _Checks, raw: Any) -> dict[str, Any]:

    data = checks.table("data", raw, ("name", "dir", "columns", "labelled", "transform", "fraction"))
    name = data.get("name")
    if name not in available_datasets():
        checks.add(f"data.name: unknown data set {name!r}; known: {', '.join(available_datasets())}")
    directory = data.get("dir")
    if directory is not None and not isinstance(directory, str):
        checks.add("data.dir: must be a path string")
    options: dict[str, Any] = {}
    columns = data.get("columns", "x")
    if columns not in COLUMNS:
        checks.add(f"data.columns: must be one of {list(COLUMNS)}, got {columns!r}")
    elif columns != "x":
        if name not in LABELLED_DATA:
            checks.add(f"data.columns: {name!r} has no labels; labelled sets: {', '.join(LABELLED_DATA)}")
        options["columns"] = columns
    labelled = data.get("labelled")
    if labelled is not None:
        if columns != "x,y,labelled":
            checks.add("data.labelled: applies to columns = 'x,y,labelled'")
        elif isinstance(labelled, bool) or not (
            (isinstance(labelled, float) and 0 < labelled <= 1) or (isinstance(labelled, int) and labelled > 0)
        ):
            checks.add(f"data.labelled: a fraction in (0, 1] or a count per class, got {labelled!r}")
        else:
            options["labelled"] = labelled
    fraction = data.get("fraction")
    if fraction is not None:
        if not is_fraction(fraction):
            checks.add(f"data.fraction: a fraction of the training rows in (0, 1], got {fraction!r}")
        elif fraction != 1:
            options["fraction"] = float(fraction)
    transform = data.get("transform")
    if transform is not None and transform not in TRANSFORMS:
        checks.add(f"data.transform: unknown {transform!r}; known: {', '.join(TRANSFORMS)}")
    return {"data": name, "data_dir": directory, "data_options": options, "transform": transform}


def _model(checks: _Checks, raw: Any) -> dict[str, Any]:

    model = checks.table("model", raw, ("preset", "factory", "options"))
    name = model.get("preset") or model.get("factory")
    if model.get("preset") and model.get("factory"):
        checks.add("model: give preset or factory, not both")
    elif model.get("factory"):
        if not isinstance(name, str) or ":" not in name:
            checks.add("model.factory: must be 'module:function'")
    elif name not in MODELS:
        checks.add(f"model.preset: unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    options = checks.options("model.options", model.get("options", {})) or {}
    return {"model": name, "model_options": dict(options)}


def _budget(checks: _Checks, raw: Any) -> dict[str, Any]:

    fields = ("epochs", "steps", "batch_size", "lr", "lr_schedule", "optimizer_options")
    budget = checks.table("budget", raw, fields)
    epochs, steps = budget.get("epochs"), budget.get("steps")
    if (epochs is None) == (steps is None):
        checks.add("budget: give exactly one of epochs or steps")
    for key, value in (("epochs", epochs), ("steps", steps)):
        if value is not None:
            checks.positive_int(f"budget.{key}", value)
    batch_size = budget.get("batch_size", 100)
    checks.positive_int("budget.batch_size", batch_size)
    lr = budget.get("lr", 1e-3)
    if not isinstance(lr, int | float) or isinstance(lr, bool) or not 0 < lr < float("inf"):
        checks.add(f"budget.lr: must be a positive number, got {lr!r}")
    schedule = budget.get("lr_schedule")
    if schedule is not None and schedule not in schedule_names():
        checks.add(f"budget.lr_schedule: unknown {schedule!r}; known: {', '.join(schedule_names())}")
    optimizer_options = checks.options("budget.optimizer_options", budget.get("optimizer_options", {})) or {}
    return {
        "epochs": epochs,
        "steps": steps,
        "batch_size": batch_size,
        "lr": float(lr) if isinstance(lr, int | float) else lr,
        "lr_schedule": schedule,
        "optimizer_options": dict(optimizer_options),
    }


def _evaluation(checks: _Checks, raw: Any, data_name: Any) -> dict[str, Any]:
    evaluation = checks.table("evaluation", raw, ("metrics", "num_samples", "iwae_k", "test_size", "inception_weights"))
    weights = evaluation.get("inception_weights")
    if weights is not None and not isinstance(weights, str):
        checks.add("evaluation.inception_weights: must be the path of the Inception-v3 weights file")
    test_size = evaluation.get("test_size")
    if test_size is not None:
        checks.positive_int("evaluation.test_size", test_size)
    metrics = evaluation.get("metrics", ["log_likelihood"])
    if not isinstance(metrics, list) or not metrics:
        checks.add("evaluation.metrics: must be a non-empty list")
        metrics = []
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        checks.add(f"evaluation.metrics: unknown {bad}; known: {', '.join(METRICS)}")
    if set(metrics) & set(MIXTURE_METRICS) and data_name not in ("ring8", "grid25"):
        checks.add(f"evaluation.metrics: {list(MIXTURE_METRICS)} need a mixture data set (ring8, grid25)")
    if set(metrics) & set(CLASSIFIER_METRICS) and data_name not in LABELLED_DATA:
        labelled = ", ".join(LABELLED_DATA)
        checks.add(f"evaluation.metrics: {list(CLASSIFIER_METRICS)} need a labelled data set ({labelled})")
    num_samples = evaluation.get("num_samples", 1000)
    checks.positive_int("evaluation.num_samples", num_samples)
    iwae_k = evaluation.get("iwae_k", 50)
    checks.positive_int("evaluation.iwae_k", iwae_k)
    return {
        "metrics": tuple(metrics), "num_samples": num_samples, "iwae_k": iwae_k, "test_size": test_size,
        "inception_weights": weights,
    }  # fmt: skip


def _methods(checks: _Checks, raw: Any) -> tuple[MethodSpec, ...]:

    if not isinstance(raw, list) or not raw:
        checks.add("methods: must be a non-empty list of [[methods]] tables")
        return ()
    methods: list[MethodSpec] = []
    for i, entry in enumerate(raw):
        where = f"methods[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            checks.add(f"{where}.name: must be a method name")
            continue
        checks.known(f"{where}.", entry, ("name", "label", "options"))
        options = checks.options(f"{where}.options", entry.get("options", {}))
        if options is None:
            continue
        try:
            get_method(entry["name"], **options)
        except (ValueError, TypeError) as err:
            checks.add(f"{where}: {err}")
            continue
        methods.append(MethodSpec(entry["name"], str(entry.get("label", entry["name"])), dict(options)))
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        checks.add(f"methods: labels must be unique, got {labels} (set label = ...)")
    return tuple(methods)


def _reference(checks: _Checks, raw: Any, metrics: tuple[str, ...], labels: list[str]) -> dict[str, Any]:
    reference = checks.table("reference", raw, ("metric", "source", "values"))
    if not reference:
        return {}
    values = reference.get("values", {})
    if reference.get("metric") not in metrics:
        checks.add(f"reference.metric: must be one of the evaluated metrics {list(metrics)}")
    if not isinstance(reference.get("source"), str):
        checks.add("reference.source: must say where the reference numbers come from")
    if not isinstance(values, Mapping) or not all(isinstance(v, int | float) for v in values.values()):
        checks.add("reference.values: must be a table of method label = number")
    elif set(values) - set(labels):
        checks.add(f"reference.values: labels {sorted(set(values) - set(labels))} are no method's label")
    return dict(reference)


def read_toml(path: str | Path, what: str = "spec") -> dict[str, Any]:
    """A TOML file as a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{what} file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SpecError(f"{path} is not valid TOML: {err}") from None


def parse_spec(raw: Mapping[str, Any] | str | Path, output: str | Path | None = None) -> Spec:
    """Validate a spec given as a dict or a TOML file; raise :class:`SpecError` listing every bad field."""
    if not isinstance(raw, Mapping):
        raw = read_toml(raw)
    checks = _Checks()
    checks.known("", raw, TOP)
    name = raw.get("name", "comparison")
    if not isinstance(name, str) or not name:
        checks.add("name: must be a non-empty string")
    seeds = _seeds(checks, raw.get("seeds", [0]))
    data = _data(checks, raw.get("data", {}))
    model = _model(checks, raw.get("model", {}))
    budget = _budget(checks, raw.get("budget", {}))
    evaluation = _evaluation(checks, raw.get("evaluation", {}), data["data"])
    methods = _methods(checks, raw.get("methods", []))
    reference = _reference(checks, raw.get("reference", {}), evaluation["metrics"], [m.label for m in methods])
    device = raw.get("device", "cpu")
    if not isinstance(device, str):
        checks.add("device: must be a string")
    nproc_per_run = raw.get("nproc_per_run", 1)
    checks.positive_int("nproc_per_run", nproc_per_run)
    if checks.errors:
        raise SpecError("bad comparison spec:\n  " + "\n  ".join(checks.errors))
    return Spec(
        name=name,
        output=str(output or raw.get("output") or Path("runs") / f"compare-{name}"),
        seeds=tuple(seeds),
        methods=methods,
        device=device,
        nproc_per_run=nproc_per_run,
        reference=reference,
        **data,
        **model,
        **budget,
        **evaluation,
    )

"""What a fit is asked to do: :class:`TrainingConfig` (every option, typed and checked), what it comes to on the data
(:class:`FitPlan`, :class:`Budget`), and the run record written from both."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from ppdgm.compile.step import check_compile_mode
from ppdgm.data.dataset import Dataset
from ppdgm.data.streams import Source, as_source, materialize
from ppdgm.data.transforms import RowTransform, get_transform
from ppdgm.errors import UsageError, positive_int
from ppdgm.methods.base import Method
from ppdgm.programs.batch import Batch, Data, describe_columns
from ppdgm.programs.sides import Auxiliary
from ppdgm.runtime import distributed
from ppdgm.runtime.devices import training_device
from ppdgm.runtime.precision import check_precision
from ppdgm.training.schedules import resolve_schedule


def function_name(fn: Callable) -> str:
    """A function's name for run records."""
    return getattr(fn, "__qualname__", None) or repr(fn)


def check_step_kwargs(step_kwargs: Any) -> dict[str, Any]:
    if step_kwargs is None:
        return {}
    if not isinstance(step_kwargs, Mapping):
        raise UsageError(
            f"step_kwargs must be a mapping from argument names to values, got {type(step_kwargs).__name__}"
        )
    bad = [k for k in step_kwargs if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise UsageError(f"step_kwargs keys name the programs' keyword arguments; {bad} are not valid names")
    return dict(step_kwargs)


@dataclass(frozen=True)
class Budget:
    """How long a fit trains: minibatch size, batches per epoch (``None``: a stream of unknown length), total steps."""

    batch_size: int
    batches_per_epoch: int | None
    total_steps: int

    @classmethod
    def of(cls, source: Source, epochs: int | None, steps: int | None, batch_size: int) -> Budget:
        """From ``epochs`` or ``steps`` (default 10 epochs), each checked."""
        if epochs is not None and steps is not None:
            raise UsageError("give epochs or steps, not both")
        batch_size = positive_int("batch_size", batch_size)
        per_epoch = source.batches_per_epoch(batch_size)
        if per_epoch is None:
            if steps is None:
                raise UsageError("an IterableDataset without __len__ has no epoch length: give steps=N")
            return cls(batch_size, None, positive_int("steps", steps))
        if steps is not None:
            return cls(batch_size, per_epoch, positive_int("steps", steps))
        return cls(batch_size, per_epoch, positive_int("epochs", 10 if epochs is None else epochs) * per_epoch)

    @property
    def num_epochs(self) -> int | None:
        """Epochs the budget spans (``None`` for a stream of unknown length: passes until the steps are done)."""
        if self.batches_per_epoch is None:
            return None
        return math.ceil(self.total_steps / self.batches_per_epoch)


def run_record(config: TrainingConfig, method: Method, dataset: Dataset, plan: FitPlan) -> dict:
    """The fit's record of what it runs (``Run.config``, checkpoints, ``config.json``): the config's values as
    resolved on the data (budget, order, transform, device), in plain data."""
    lr, optimizer, schedule, auxiliary = config.lr, config.optimizer, config.lr_schedule, plan.auxiliary
    return {
        "method": method.name,
        "method_options": method.options(),
        "data": dataset.name,
        "batch_size": plan.budget.batch_size,
        "epochs": plan.budget.num_epochs,
        "steps": plan.budget.total_steps,
        "lr": dict(lr) if isinstance(lr, Mapping) else lr,
        "optimizer": optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", repr(optimizer)),
        "seed": config.seed,
        "device": str(plan.device),
        "obs_site": config.obs_site,
        "lr_schedule": schedule if isinstance(schedule, str) or schedule is None else repr(schedule),
        "world_size": 1 if plan.context is None else plan.context.world_size,
        "precision": config.precision,
        "optimizer_options": plain_options(config.optimizer_options),
        "shuffle": plan.shuffle,
        "transform": None if plan.transform is None else repr(plan.transform),
        "source": plan.source.name,
        "columns": describe_columns(plan.first),
        "data_identity": plan.source.fingerprint(),
        "step_kwargs": {
            k: v if isinstance(v, int | float | str | bool | None) else repr(v) for k, v in plan.step_kwargs.items()
        },
        "arguments": None if config.arguments is None else function_name(config.arguments),
        "generated_rows": None if config.generated_rows is None else function_name(config.generated_rows),
        "auxiliary": [[function_name(x.model), function_name(x.guide), x.weight] for x in auxiliary] or None,
    }


@dataclass(frozen=True)
class FitPlan:
    """What a config comes to on its data and method: the source, transform, budget, order, first batch, device,
    auxiliary pairs and per-step arguments."""

    source: Source
    transform: RowTransform | None
    budget: Budget
    shuffle: bool
    first: Data
    device: torch.device
    context: distributed.Context | None
    auxiliary: tuple[Auxiliary, ...]
    step_kwargs: dict[str, Any]

    @classmethod
    def of(cls, config: TrainingConfig, dataset: Dataset, method: Method) -> FitPlan:
        """Resolve ``config`` on ``dataset`` (reading its first batch, as the programs will see it) for ``method``."""
        source = as_source(dataset.train)
        transform = get_transform(config.transform) if config.transform is not None else dataset.transform
        batch_size = config.batch_size if config.batch_size is not None else source.preferred_batch_size or 100
        if config.shuffle is False and source.sampling is not None:
            raise UsageError(
                f"shuffle=False, but the DataLoader's sampler draws its rows at random ({source.sampling.kind}); "
                "ppdgm honours the sampler (drawn from the seed): leave shuffle unset, or give the loader a "
                "SequentialSampler"
            )
        shuffle = config.shuffle if config.shuffle is not None else source.shuffle is not False
        budget = Budget.of(source, config.epochs, config.steps, batch_size)
        first = materialize(dataset.train, budget.batch_size, transform=transform, seed=config.seed)
        if isinstance(first, Batch) and not method.accepts_columns:
            raise UsageError(f"method {method.name!r} trains on a single tensor of rows, not on data columns")
        device, context = training_device(config.device)
        check_precision(config.precision, device)
        auxiliary = tuple(map(Auxiliary.of, config.auxiliary))
        step_kwargs = check_step_kwargs(config.step_kwargs)
        return cls(source, transform, budget, shuffle, first, device, context, auxiliary, step_kwargs)


def plain_options(options: Mapping[str, Any] | None) -> dict:
    """Optimizer options as plain data (nested mappings to dicts, tuples to lists) for records and comparisons."""

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return list(value) if isinstance(value, tuple) else value

    return plain(dict(options or {}))


#: the groups of :class:`TrainingConfig`'s fields, in the order docs list them
GROUPS = {
    "budget": ("epochs", "steps", "batch_size"),
    "optimisation": ("lr", "optimizer", "optimizer_options", "lr_schedule"),
    "data": ("shuffle", "transform", "data_dir"),
    "checkpointing": ("checkpoint_dir", "checkpoint_every", "resume"),
    "logging": ("progress", "log_every", "validate_every", "callbacks"),
    "runtime": ("device", "seed", "precision", "compile", "skip_nonfinite", "validate"),
    "programs": ("obs_site", "data_plate", "step_kwargs", "arguments", "generated_rows", "auxiliary"),
}


@dataclass(frozen=True)
class TrainingConfig:
    """Every option of a fit besides the pair, the data and the method: the one place a training option is defined.

    :func:`~ppdgm.training.fit.fit` takes these as keyword arguments (``fit(model, guide, data, "iwae", epochs=5)``,
    any other keyword is a method option), the command line and comparison specs build one, and run records are
    written from it. Groups (:data:`GROUPS`):

    * budget: ``epochs`` or ``steps`` (default 10 epochs; with ``steps`` the last epoch may be partial);
      ``batch_size``, the global minibatch size (default: a DataLoader's own, else 100).
    * optimisation: ``lr``, ``optimizer``, ``optimizer_options``, each a value or a mapping from player name
      (``"model"``...) to one; ``lr_schedule``, a function of the epoch giving a factor on the learning rates, or
      ``"burda2016"``/``"linear"``.
    * data: ``shuffle``, a fresh seeded order every epoch (default: a DataLoader's own setting, else ``True``; an
      IterableDataset keeps its own order); ``transform``, ``"binarize"``, ``"dequantize"`` or a
      :class:`~ppdgm.data.transforms.RowTransform` applied to each batch's first column (default: the data set's);
      ``data_dir``, where named data sets are read from.
    * checkpointing: ``checkpoint_dir``, a checkpoint after every epoch; ``checkpoint_every``, also one every N steps
      (resumed mid-epoch, bit for bit); ``resume``, ``True`` continues a checkpoint written with the same settings
      (a longer budget is fine), ``"override"`` with this call's (docs/reliability.md).
    * logging: ``progress`` and ``log_every``, a progress bar refreshed every N steps (one line per epoch when not a
      terminal); ``validate_every``, the method's objective on the validation split every N epochs (0: never);
      ``callbacks``, ``callback(run, record)`` after every epoch, returning ``True`` stops training.
    * runtime: ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``...); ``seed``, which seeds every generator and the
      data order; ``precision``, ``"fp32"`` or ``"bf16"`` (networks in bfloat16, distributions in float32);
      ``compile``, ``"auto"`` runs steps from recordings (:mod:`ppdgm.compile`) falling back to the eager step with a
      ``CompileWarning`` that names the cause, ``True`` raises instead, ``False`` always runs eagerly (both paths
      give the same result from the same seed); ``skip_nonfinite``, skip updates with a non-finite loss or gradient
      (counted as ``skipped_updates``) instead of stopping with ``TrainingDiverged``; ``validate``, Pyro's argument
      checks in every step (always in the first).
    * programs: ``obs_site`` and ``data_plate``, only to pick among several observed sites / plates of the batch's
      size; ``step_kwargs``, keyword arguments passed to both programs beside each batch as
      ``svi.step(x, name=value)`` passes them, each a value or a function ``f(step, epoch)``; ``arguments``, a
      function building the programs' arguments from each batch's columns as a Pyro loop does before ``svi.step``
      (Pyro's DMM), returning a tuple or a dict; ``generated_rows``, for the sleep phases of a pair whose
      observations no column holds as it is: ``f(values, *columns)`` from the generated values of every observed
      site (by site name) and the batch's columns to the columns holding those observations, checked once before
      training; ``auxiliary``, further ``(model, guide[, weight])`` pairs whose ELBOs join the loss of ``vae`` or
      ``iwae`` (:class:`~ppdgm.programs.sides.Auxiliary`).

    ``method_options`` are the keywords that are not fields: they go to the method's constructor.
    """

    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | Mapping[str, float] = 1e-3
    optimizer: Any = "adam"
    optimizer_options: Mapping[str, Any] | None = None
    lr_schedule: str | Callable[[int], float] | None = None
    shuffle: bool | None = None
    transform: str | RowTransform | None = None
    data_dir: str | Path | None = None
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int | None = None
    resume: bool | str = True
    progress: bool = True
    log_every: int = 25
    validate_every: int = 1
    callbacks: Sequence[Callable[..., Any]] = ()
    device: str | torch.device = "cpu"
    seed: int = 0
    precision: str = "fp32"
    compile: bool | str = "auto"
    skip_nonfinite: bool = False
    validate: bool = False
    obs_site: str | None = None
    data_plate: str | None = None
    step_kwargs: Mapping[str, Any] | None = None
    arguments: Callable | None = None
    generated_rows: Callable | None = None
    auxiliary: Sequence[Any] = ()
    method_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, base: TrainingConfig | None = None, **options: Any) -> TrainingConfig:
        """A config from keyword options (``fit``'s): the fields by name, every other keyword a method option;
        ``base``'s values where a keyword does not set them."""
        names = {f.name for f in fields(cls)} - {"method_options"}
        base = base or cls()
        method_options = {**base.method_options, **{k: v for k, v in options.items() if k not in names}}
        return replace(base, **{k: v for k, v in options.items() if k in names}, method_options=method_options)

    def check(self) -> None:
        """The checks of the plain options, before any data is read (each names the option)."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"seed must be a non-negative integer, got {self.seed!r}")
        positive_int("log_every", self.log_every)
        if isinstance(self.validate_every, bool) or not isinstance(self.validate_every, int) or self.validate_every < 0:
            raise UsageError(f"validate_every must be a non-negative integer (0: never), got {self.validate_every!r}")
        if not all(callable(cb) for cb in self.callbacks):
            raise UsageError("callbacks must be callables callback(run, record)")
        for label in ("progress", "validate", "skip_nonfinite"):
            if not isinstance(getattr(self, label), bool):
                raise UsageError(f"{label} must be True or False, got {getattr(self, label)!r}")
        folder = self.checkpoint_dir
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise UsageError(f"checkpoint_dir {str(folder)!r} is a file, not a folder")
        check_compile_mode(self.compile)
        if self.resume not in (True, False, "override"):
            raise UsageError(f"resume must be True, False or 'override', got {self.resume!r}")
        if self.checkpoint_every is not None:
            positive_int("checkpoint_every", self.checkpoint_every)
            if folder is None:
                raise UsageError("checkpoint_every needs a checkpoint_dir to write the checkpoints to")
        if self.shuffle is not None and not isinstance(self.shuffle, bool):
            raise UsageError(f"shuffle must be True or False, got {self.shuffle!r}")
        check_step_kwargs(self.step_kwargs)
        tuple(map(Auxiliary.of, self.auxiliary))  # each pair checked before any data is read
        resolve_schedule(self.lr_schedule, 1)  # a bad name fails before any data is read

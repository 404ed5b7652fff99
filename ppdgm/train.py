"""Training: :func:`fit` runs a method on a model/guide pair and returns a :class:`Run`.

Design points:

* Each fit runs in its own Pyro param-store scope, so two runs in one process never share (or
  silently alias) parameters with the same ``pyro.module`` names; the trained parameters are
  merged back into the global store when the fit ends.
* One torch optimizer per player (see :mod:`ppdgm.method`).
* Metrics stay on the device during an epoch and are read once per ``log_every`` steps (for the
  progress bar) and once per epoch (for the history): no ``.item()`` per step.
* The data order of epoch ``e`` is a function of ``(seed, e)`` alone, and a checkpoint holds every
  random state, so a run resumed from the checkpoint of epoch ``e`` is bit-identical to one that
  was never interrupted.
* Pyro's argument validation runs on the first step of every fit (bad shapes and supports show up
  at once, naming the site) and is switched off in the hot loop (``validate=True`` keeps it on).
"""

from __future__ import annotations

import contextlib
import csv
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from ppdgm import checkpoints, distributed
from ppdgm.batch import Batch, Data, describe_columns
from ppdgm.batch import batch_size as rows_of
from ppdgm.checkpoints import CheckpointError
from ppdgm.compiled import CompiledStep, check_compile_mode
from ppdgm.data import Dataset, as_dataset
from ppdgm.divergence import all_finite, diagnose, params_finite
from ppdgm.errors import MissingResourceError, UsageError
from ppdgm.handlers import unconstrained_params
from ppdgm.inspection import describe
from ppdgm.method import Engine, Method, get_method, implementation, positive_int
from ppdgm.precision import autocast, check_precision
from ppdgm.programs import Auxiliary, ConventionError, ProgramPair
from ppdgm.streams import (
    RowTransform,
    Source,
    TensorSource,
    as_source,
    get_transform,
    is_stream,
    materialize,
    noise_key,
    rank_rows,
)

CHECKPOINT_NAME = "checkpoint.pt"
Callback = Callable[["Run", dict], Any]


def burda2016_schedule(epoch: int) -> float:
    """Burda et al. (2016): 3^i epochs at learning rate lr * 10^(-i/7), i = 0..7 (3,280 epochs in all)."""
    stage, end = 0, 1
    while epoch >= end and stage < 7:
        stage += 1
        end += 3**stage
    return 10 ** (-stage / 7)


def linear_decay_schedule(num_epochs: int) -> Callable[[int], float]:
    """lr * (1 - epoch / num_epochs): a straight line from the full rate to zero over the run."""

    def schedule(epoch: int) -> float:
        return max(0.0, 1.0 - epoch / num_epochs)

    return schedule


LR_SCHEDULES: dict[str, Callable[[int], float]] = {"burda2016": burda2016_schedule}
LENGTH_SCHEDULES: dict[str, Callable[[int], Callable[[int], float]]] = {"linear": linear_decay_schedule}


def schedule_names() -> list[str]:
    """The names ``lr_schedule`` accepts."""
    return sorted([*LR_SCHEDULES, *LENGTH_SCHEDULES])


def resolve_schedule(
    schedule: str | Callable[[int], float] | None, num_epochs: int | None = None
) -> Callable[[int], float] | None:
    """A schedule function from a callable or a name (``"burda2016"``; ``"linear"``, which needs ``num_epochs``)."""
    if schedule is None or callable(schedule):
        return schedule
    if schedule in LENGTH_SCHEDULES and num_epochs is not None:
        return LENGTH_SCHEDULES[schedule](num_epochs)
    try:
        return LR_SCHEDULES[schedule]
    except KeyError:
        raise UsageError(f"unknown lr_schedule {schedule!r}; known: {schedule_names()}") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; a clear error without a GPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MissingResourceError(
            f"device {str(device)!r} was asked for but no CUDA GPU is available; use device='cpu'"
        )
    return dev


@dataclass
class Run:
    """The result of :func:`fit`: the trained pair, its history and the means to save and reload it.

    Attributes:
        history: one dict per epoch (``epoch``, ``step``, ``seconds``, ``train_*`` and ``valid_*`` metrics).
        param_state: the run's Pyro param-store state (names to tensors); see :meth:`params`.
        config: the options of the fit, for run records.
    """

    model: Callable
    guide: Callable | None
    method: Method
    programs: ProgramPair
    engine: Engine
    dataset: Dataset
    device: torch.device
    config: dict
    history: list[dict] = field(default_factory=list)
    param_state: Any = field(default_factory=dict)
    seconds: float = 0.0
    #: the step the fit ran (:class:`~ppdgm.compiled.CompiledStep`): ``run.stepper(x)`` takes one more
    stepper: Any = None

    @property
    def train_data(self) -> Data:
        return self.dataset.train

    @property
    def valid_data(self) -> Data:
        return self.dataset.valid

    @property
    def test_data(self) -> Data:
        return self.dataset.test

    @contextlib.contextmanager
    def params(self) -> Iterator[Any]:
        """Make this run's parameters the active Pyro param store inside the ``with`` block."""
        with pyro.get_param_store().scope(self.param_state) as state:
            yield state

    def state(self) -> dict:
        """Trained parameters by player (as named in the param store) with the config and history."""
        players = {
            name: dict(zip(player.param_names, (p.detach().cpu() for p in player.params)))
            for name, player in self.engine.players.items()
        }
        return {"players": players, "config": self.config, "history": self.history}

    def save(self, path: str | Path) -> None:
        """Write the trained parameters, config and history to ``path`` (atomically)."""
        checkpoints.save(self.state(), path)

    def save_history(self, path: str | Path) -> None:
        """Write the per-epoch history as CSV (one row per epoch)."""
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        with checkpoints.atomic_path(path, "history") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)


def load_params(path: str | Path, programs: ProgramPair, example: Data) -> dict:
    """Load parameters written by :meth:`Run.save` into the modules of ``programs``.

    The programs are traced once on ``example`` (a batch of data) in a fresh param-store scope, so
    that the names find the tensors the modules really use; values are copied in place.
    Returns the saved record (config and history).
    """
    saved = checkpoints.load(path, "parameter file", "train the run again")
    with pyro.get_param_store().scope() as state:
        structure = programs.inspect(example)
        store = unconstrained_params()
        wanted = set(structure.model_param_names) | set(structure.guide_param_names)
        found = {n: v for player in saved["players"].values() for n, v in player.items() if n in wanted}
        missing = sorted(wanted - set(found))
        if missing:
            raise UsageError(f"{path} has no values for parameters {missing}: written for another model or guide?")
        with torch.no_grad():
            for name, value in found.items():
                target = store[name]
                if target.shape != value.shape:
                    raise UsageError(
                        f"parameter {name!r}: saved shape {tuple(value.shape)}, model has {tuple(target.shape)}"
                    )
                target.copy_(value.to(target.device))
    pyro.get_param_store().set_state(state)
    return saved


def _move_programs(
    programs: ProgramPair, names: Sequence[str], device: torch.device, modules: Sequence[torch.nn.Module] = ()
) -> None:
    for fn in (programs.model, programs.guide, *modules):
        if isinstance(fn, torch.nn.Module):
            fn.to(device)
    for p in programs.param_tensors(names):
        if p.device != device:
            p.data = p.data.to(device)


def fit(
    model: Callable,
    guide: Callable | None,
    data: Any,
    method: str | Method = "vae",
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    shuffle: bool | None = None,
    transform: str | RowTransform | None = None,
    lr: float | Mapping[str, float] = 1e-3,
    optimizer: Any = "adam",
    optimizer_options: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool | str = True,
    validate_every: int = 1,
    obs_site: str | None = None,
    data_plate: str | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    log_every: int = 25,
    validate: bool = False,
    lr_schedule: str | Callable[[int], float] | None = None,
    precision: str = "fp32",
    skip_nonfinite: bool = False,
    compile: bool | str = "auto",
    step_kwargs: Mapping[str, Any] | None = None,
    arguments: Callable | None = None,
    generated_rows: Callable | None = None,
    auxiliary: Sequence[Any] = (),
    **method_options: Any,
) -> Run:
    """Train ``model`` and ``guide`` on ``data`` with the algorithm ``method`` (in full: docs/usage.md).

    Args:
        model, guide: Pyro programs, called with each batch as ``SVI.step`` calls them (``model(x)``,
            ``model(*columns)``, ``model(**columns)``, see :mod:`ppdgm.programs`); ``guide=None``: guide-less methods
        data: a data set name, a :class:`~ppdgm.data.Dataset`, a tensor of rows, a tuple/dict of columns, or a
            torch ``Dataset``, ``IterableDataset`` or ``DataLoader`` (read in minibatches, see :mod:`ppdgm.streams`).
        method: a registered name (``ppdgm.available_methods()``) or a :class:`~ppdgm.method.Method`;
            ``method_options`` go to its constructor.
        epochs, steps: the budget (default 10 epochs); with ``steps`` the last epoch may be partial.
        batch_size: the (global) minibatch size (default: a DataLoader's own, else 100).
        shuffle: a fresh seeded order every epoch (default: a DataLoader's own setting, else ``True``); an
            IterableDataset keeps its own order.
        transform: ``"binarize"`` (dynamic binarization), ``"dequantize"`` or a
            :class:`~ppdgm.streams.RowTransform`, applied to each batch's first column (default: the data set's).
        lr, optimizer, optimizer_options: each a value or a mapping from player name (``"model"``...) to one.
        device, seed: ``"cpu"``, ``"cuda"``, ``"auto"``...; ``seed`` seeds every generator and the data order.
        callbacks: ``callback(run, record)`` after every epoch; returning ``True`` stops training.
        checkpoint_dir, resume: a checkpoint after every epoch; ``resume=True`` continues one written with the
            same settings (a longer budget is fine), ``"override"`` with this call's (docs/reliability.md).
        checkpoint_every: also a checkpoint every N steps inside an epoch (resumed mid-epoch, bit for bit).
        validate_every: the method's objective on the validation split every N epochs (0: never).
        obs_site, data_plate: only to pick among several observed sites / plates of the batch's size.
        data_dir: where named data sets are read from.
        progress, log_every: a progress bar refreshed every N steps (one line per epoch when not a terminal).
        validate: Pyro's argument checks in every step (always in the first).
        lr_schedule: a function of the epoch giving a factor on the learning rates, or ``"burda2016"``/``"linear"``.
        precision: ``"fp32"`` or ``"bf16"`` (networks in bfloat16, distributions in float32).
        skip_nonfinite: skip updates with a non-finite loss or gradient (counted as ``skipped_updates``)
            instead of stopping with ``TrainingDiverged``.
        compile: ``"auto"`` runs steps from recordings traced once per batch shape (:mod:`ppdgm.compiled`), falling
            back to the eager step with a ``CompileWarning`` that names the cause; ``True`` raises instead of falling
            back; ``False`` always runs the eager step. Both paths give the same result from the same seed.
        step_kwargs: keyword arguments passed to both programs beside each batch, as ``svi.step(x, name=value)``
            passes them (DMM's ``annealing_factor``): each a value, or a function ``f(step, epoch)`` of the 0-based
            step and epoch giving this step's value (recorded in ``config``; a resumed fit computes the same values).
        arguments: a function that builds the programs' arguments from each batch's columns, as a Pyro loop does
            before ``svi.step`` (Pyro's DMM: sorted sequences, a reversed ``PackedSequence``, masks, lengths); it
            returns a tuple (positional) or a dict (keyword). Data-side methods, and the sleep phases with
            ``generated_rows`` (docs/programs.md).
        generated_rows: for the sleep phases (``wake-sleep``, ``rws``) of a pair whose observations no data column
            holds as it is (``arguments=``, an observed site reading a slice or a transformed column): a function
            ``f(values, *columns, **named_columns)`` from the generated values of every observed site (a dict by site
            name, rows in the order the programs saw them) and the batch's columns to the batch's columns holding
            those observations, in the data's layout (a tensor, a tuple or a dict). Checked once before training:
            on its rows the model must observe exactly the generated values.
        auxiliary: further Pyro model/guide pairs, each ``(model, guide)`` or ``(model, guide, weight)``, whose
            ELBOs on each batch join the loss of ``vae`` or ``iwae`` (Pyro's ss-vae's classification loss;
            :class:`~ppdgm.programs.Auxiliary`).

    Under ``torchrun`` the fit is data-parallel and equals one process to float tolerance (docs/scaling.md).

    Returns:
        A :class:`Run` with the trained programs, per-epoch history, timings and save/load.
    """
    _check_fit_arguments(seed, log_every, validate_every, callbacks, checkpoint_dir, progress, validate, skip_nonfinite)
    check_compile_mode(compile)
    if resume not in (True, False, "override"):
        raise UsageError(f"resume must be True, False or 'override', got {resume!r}")
    if checkpoint_every is not None:
        positive_int("checkpoint_every", checkpoint_every)
        if checkpoint_dir is None:
            raise UsageError("checkpoint_every needs a checkpoint_dir to write the checkpoints to")
    if shuffle is not None and not isinstance(shuffle, bool):
        raise UsageError(f"shuffle must be True or False, got {shuffle!r}")
    step_kwargs = _check_step_kwargs(step_kwargs)
    auxiliary_pairs = tuple(map(Auxiliary.of, auxiliary))
    method_obj = get_method(method, **method_options)
    resolve_schedule(lr_schedule, 1)  # a bad name fails before any data is read
    if method_obj.requires_guide and guide is None:
        raise UsageError(f"method {method_obj.name!r} needs a guide; got guide=None")
    dataset = as_dataset(data, data_dir)
    source = as_source(dataset.train)
    transform = get_transform(transform) if transform is not None else dataset.transform
    if batch_size is None:
        batch_size = source.preferred_batch_size or 100
    if shuffle is False and source.sampling is not None:
        raise UsageError(
            f"shuffle=False, but the DataLoader's sampler draws its rows at random ({source.sampling.kind}); ppdgm "
            "honours the sampler (drawn from the seed): leave shuffle unset, or give the loader a SequentialSampler"
        )
    shuffle = shuffle if shuffle is not None else source.shuffle if source.shuffle is not None else True
    budget = Budget.of(source, epochs, steps, batch_size)
    first = materialize(dataset.train, budget.batch_size, transform=transform, seed=seed)  # as the programs see it
    if isinstance(first, Batch) and not method_obj.accepts_columns:
        raise UsageError(f"method {method_obj.name!r} trains on a single tensor of rows, not on data columns")
    dev, ctx = _training_device(device)
    check_precision(precision, dev)
    config = _config(method_obj, dataset, budget, lr, optimizer, seed, dev, obs_site, lr_schedule, ctx, precision)
    config.update(
        optimizer_options=_plain(optimizer_options),
        shuffle=shuffle,
        transform=None if transform is None else repr(transform),
        source=source.name,
        columns=describe_columns(first),
        data_identity=source.fingerprint(),
        step_kwargs={
            k: v if isinstance(v, int | float | str | bool | None) else repr(v) for k, v in step_kwargs.items()
        },
        arguments=None if arguments is None else _name(arguments),
        generated_rows=None if generated_rows is None else _name(generated_rows),
        auxiliary=[[_name(pair.model), _name(pair.guide), pair.weight] for pair in auxiliary_pairs] or None,
    )
    loop = TrainingLoop(
        budget, seed, tuple(callbacks), None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME,
        resume, validate_every, progress and distributed.is_main(), log_every, validate,
        resolve_schedule(lr_schedule, budget.num_epochs), precision, shuffle, transform, checkpoint_every, compile,
        step_kwargs,
    )  # fmt: skip
    pyro.set_rng_seed(seed)
    programs = ProgramPair(
        model,
        guide,
        obs_site=obs_site,
        data_plate=data_plate,
        partial_guide=method_obj.partial_guide,
        arguments=arguments,
        generated_rows=generated_rows,
        auxiliary=auxiliary_pairs,
    )
    programs.step_kwargs = loop.step_arguments(0, 0)
    store = pyro.get_param_store()
    writer = checkpoints.writing(checkpoint_dir) if checkpoint_dir is not None and distributed.is_main() else None
    with writer or contextlib.nullcontext(), store.scope() as scope_state:  # one writer per checkpoint folder
        _inspect(programs, method_obj, dataset, first, transform, seed)
        config["obs_site"] = programs.obs_site
        engine = _engine(programs, method_obj, dev, ctx, optimizer, lr, optimizer_options)
        engine.skip_nonfinite = skip_nonfinite
        run = Run(model, guide, method_obj, programs, engine, dataset, dev, config, param_state=scope_state)
        loop.run(run)
    store.set_state(scope_state)
    return run


def _name(fn: Callable) -> str:
    """A function's name for run records."""
    return getattr(fn, "__qualname__", None) or repr(fn)


def _check_step_kwargs(step_kwargs: Any) -> dict[str, Any]:
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


def _check_fit_arguments(
    seed: Any,
    log_every: Any,
    validate_every: Any,
    callbacks: Any,
    checkpoint_dir: Any,
    progress: Any,
    validate: Any,
    skip_nonfinite: Any,
) -> None:
    """The checks of ``fit``'s plain arguments, before any work."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    positive_int("log_every", log_every)
    if isinstance(validate_every, bool) or not isinstance(validate_every, int) or validate_every < 0:
        raise UsageError(f"validate_every must be a non-negative integer (0: never), got {validate_every!r}")
    if not all(callable(cb) for cb in callbacks):
        raise UsageError("callbacks must be callables callback(run, record)")
    for label, flag in (("progress", progress), ("validate", validate), ("skip_nonfinite", skip_nonfinite)):
        if not isinstance(flag, bool):
            raise UsageError(f"{label} must be True or False, got {flag!r}")
    if checkpoint_dir is not None and Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
        raise UsageError(f"checkpoint_dir {str(checkpoint_dir)!r} is a file, not a folder")


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


def _config(
    method: Method,
    dataset: Dataset,
    budget: Budget,
    lr: Any,
    optimizer: Any,
    seed: int,
    dev: torch.device,
    obs_site: str | None,
    lr_schedule: Any,
    ctx: distributed.Context | None,
    precision: str,
) -> dict:
    """The fit's record of what it runs (``Run.config``, checkpoints, ``config.json``)."""
    return {
        "method": method.name,
        "method_options": method.options(),
        "data": dataset.name,
        "batch_size": budget.batch_size,
        "epochs": budget.num_epochs,
        "steps": budget.total_steps,
        "lr": dict(lr) if isinstance(lr, Mapping) else lr,
        "optimizer": optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", repr(optimizer)),
        "seed": seed,
        "device": str(dev),
        "obs_site": obs_site,
        "lr_schedule": lr_schedule if isinstance(lr_schedule, str) or lr_schedule is None else repr(lr_schedule),
        "world_size": 1 if ctx is None else ctx.world_size,
        "precision": precision,
    }


def _plain(options: Mapping[str, Any] | None) -> dict:
    """Optimizer options as plain data (nested mappings to dicts, tuples to lists) for records and comparisons."""

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return list(value) if isinstance(value, tuple) else value

    return plain(dict(options or {}))


def _training_device(device: str | torch.device) -> tuple[torch.device, distributed.Context | None]:
    """The device of this process (a rank's own GPU under torchrun) and the distributed context, if any."""
    dev = resolve_device(device)
    ctx = distributed.context(dev)
    if ctx is not None and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", ctx.local_rank)
    if dev.type == "cuda":
        if dev.index is None:  # set_device refuses a bare "cuda" on recent torch; tensors report an index anyway
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev, ctx


def _inspect(
    programs: ProgramPair, method: Method, dataset: Dataset, first: Data, transform: RowTransform | None, seed: int
) -> None:
    """Inspect the pair on the first batch, check the data, and let the method check the pair.

    Rows in memory are checked whole; a split read in minibatches (a torch data set) is checked on its first
    batch (the rest is checked as it is read: non-finite losses stop training, naming the site).
    """
    splits = []
    for name in ("train", "valid", "test"):
        split = dataset.split(name)
        if split is None:
            continue
        if is_stream(split) and name == "train":  # its first batch, `first`, already read
            splits.append(first)
        else:  # a stream's first batch, rows in memory whole
            limit = rows_of(first) if is_stream(split) else None
            splits.append(materialize(split, limit, transform=transform, seed=seed))
    programs.inspect_data(first, splits)
    method.check_programs(programs)
    method.setup(programs)


def _check_layout(method: Method, programs: ProgramPair, batch: Data) -> None:
    """A batch whose columns differ from the first batch's was inspected: may the method train on both?"""
    if not method.several_layouts:
        raise ConventionError(
            f"method {method.name!r} trains on batches of one layout, but this batch {describe(batch)} has "
            "other columns than the first; vae and iwae train on several (e.g. labelled and unlabelled streams)"
        )
    method.check_programs(programs)
    method.setup(programs)


def _engine(
    programs: ProgramPair,
    method: Method,
    dev: torch.device,
    ctx: distributed.Context | None,
    optimizer: Any,
    lr: float | Mapping[str, float],
    optimizer_options: Mapping[str, Any] | None,
) -> Engine:
    """The players on the training device with their optimizers (gradients averaged over ranks when distributed)."""
    structure = programs.structure
    extra_players = method.extra_players()
    names = structure.model_param_names + structure.guide_param_names + sum(extra_players.values(), ())
    _move_programs(programs, names, dev, method.modules())
    engine = Engine(
        programs,
        {"model": structure.model_param_names, "guide": structure.guide_param_names, **extra_players},
        optimizer=optimizer,
        lr=lr,
        optimizer_options=optimizer_options,
        extra_params=method.extra_params(),
    )
    if ctx is not None:
        engine.grad_sync = distributed.GradientSync(ctx)
        engine.grad_sync.broadcast([p for player in engine.players.values() for p in player.params])
    return engine


def _device_context(dev: torch.device):
    return torch.device(dev) if dev.type != "cpu" else contextlib.nullcontext()


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says how many epochs completed and where the checkpoint is."""


@dataclass(frozen=True)
class TrainingLoop:
    """The epochs of a fit: batches, steps, metrics, validation, checkpoints, callbacks and the progress bar."""

    budget: Budget
    seed: int
    callbacks: tuple[Callback, ...]
    checkpoint: Path | None
    resume: bool | str
    validate_every: int
    progress: bool
    log_every: int
    validate: bool
    schedule: Callable[[int], float] | None
    precision: str
    shuffle: bool = True
    transform: RowTransform | None = None
    checkpoint_every: int | None = None
    compile: bool | str = "auto"
    step_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def step_arguments(self, step: int, epoch: int) -> dict[str, Any]:
        """The programs' keyword arguments for 0-based ``step`` of ``epoch``: each value, or its function's value."""
        return {k: v(step, epoch) if callable(v) else v for k, v in self.step_kwargs.items()}

    def run(self, run: Run) -> None:
        """Train ``run`` from its checkpoint (when resuming) to the end of the budget or a callback's stop."""
        start_epoch, step, partial = 0, 0, None
        if self.checkpoint is not None and self.resume and self.checkpoint.exists():
            start_epoch, step, partial = _restore(run, self.checkpoint, self.resume == "override")
        interactive = sys.stderr.isatty()
        bar = tqdm(
            total=self.budget.total_steps,
            initial=step,
            disable=not (self.progress and interactive),
            desc=f"{run.method.name}",
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )
        # which of torch's optimizer implementations steps each player (a checkpoint's own, when resumed)
        run.config["optimizers"] = {name: implementation(p.optimizer) for name, p in run.engine.players.items()}
        epoch = _Epoch(self, run, bar, step)
        try:
            for index in range(start_epoch, self.budget.num_epochs or sys.maxsize):
                if step >= self.budget.total_steps:
                    break
                record = epoch.train(index, step, partial)
                partial = None
                step = record["step"]
                run.history.append(record)
                run.seconds += record["seconds"]
                bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.startswith(("train_", "valid_"))})
                if self.progress and not interactive:  # a log file: one line per epoch, no bar redraws
                    values = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k.startswith(("train_", "valid_")))
                    of = self.budget.num_epochs or "?"
                    print(
                        f"{run.method.name} epoch {record['epoch']}/{of} step {step}: {values}",
                        file=sys.stderr,
                        flush=True,
                    )
                if self.checkpoint is not None:  # an epoch cut short by the budget is continued by a longer one
                    unfinished = epoch.unfinished
                    if distributed.is_main():
                        _save_checkpoint(run, self.checkpoint, index + (unfinished is None), step, unfinished)
                    epoch.shards.barrier()
                if any(cb(run, record) is True for cb in self.callbacks):
                    break
        except KeyboardInterrupt as interrupt:
            bar.close()
            saved = self.checkpoint is not None and self.checkpoint.exists()
            where = f"; the checkpoint in {self.checkpoint.parent} resumes it" if saved else ""
            raise TrainingInterrupted(f"interrupted after {len(run.history)} complete epoch(s){where}") from interrupt
        bar.close()


class _Epoch:
    """One epoch of steps over the training rows, then the epoch's record (metrics read once, validation)."""

    def __init__(self, loop: TrainingLoop, run: Run, bar: Any, start_step: int) -> None:
        self.loop, self.run, self.bar = loop, run, bar
        train, valid = run.dataset.train, run.dataset.valid
        self.source = TensorSource(train.to(run.device)) if not is_stream(train) else as_source(train)
        self.valid = valid.to(run.device) if valid is not None and not is_stream(valid) else valid
        self.shards = _Shards(run.programs, run.engine)
        self.first_step = True
        self.step = run.stepper = CompiledStep(
            run.method, run.engine, loop.compile, start_step=start_step, validate_all=loop.validate
        )
        # a data-parallel step's recording depends on the global batch size (the rank's block of rows)
        self.context = (lambda n: n) if self.shards.world_size > 1 else (lambda n: ())
        self.unfinished: dict | None = None  # the progress of an epoch the budget ended inside

    def train(self, epoch: int, step: int, partial: dict | None = None) -> dict:
        """Train epoch ``epoch`` from step ``step`` (from ``partial``'s position when resuming mid-epoch)."""
        loop, run, dev = self.loop, self.run, self.run.device
        method, engine, shards, transform = run.method, run.engine, self.shards, loop.transform
        if loop.schedule is not None:
            engine.scale_learning_rates(loop.schedule(epoch))
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        skipped_before = engine.skipped_updates
        count, checked, start, seconds = 0, step, 0, 0.0
        if partial is not None:
            sums, counts = _to_device(partial["sums"], dev), _to_device(partial["counts"], dev)
            count, start, seconds = partial["count"], partial["position"], partial["seconds"]
            skipped_before -= partial["skipped"]
        tic = time.perf_counter() - seconds
        batch: Data | None = None
        self.unfinished, position = None, start - 1
        with _device_context(dev):
            batches = self.source.batches(epoch, loop.budget.batch_size, loop.seed, loop.shuffle, start)
            self.step.epoch_start = True
            for position, (n, batch) in enumerate(batches, start):
                if loop.step_kwargs:
                    run.programs.step_kwargs = loop.step_arguments(step, epoch)
                batch = batch.to(dev, non_blocking=True)  # overlaps the copy when the loader pins memory
                if transform is not None:
                    batch = transform(batch, noise_key(loop.seed, epoch, position), rank_rows(n), n)
                if run.programs.select(batch):  # a batch of other columns (Interleaved streams): checked again
                    _check_layout(method, run.programs, batch)
                    self.first_step = True
                with (
                    pyro.validation_enabled(loop.validate or self.first_step),
                    shards.take(n),
                    autocast(dev, loop.precision),
                ):
                    metrics = self.step(batch, self.context(n))
                self.first_step = False
                if shards.weight != 1.0:
                    metrics = {k: v * shards.weight for k, v in metrics.items()}
                if engine.skip_nonfinite:  # a skipped step's non-finite metrics stay out of the means
                    for k, v in metrics.items():
                        finite = torch.isfinite(v)
                        counts[k] = counts[k] + finite if k in counts else finite.double()
                    metrics = {k: torch.where(torch.isfinite(v), v, torch.zeros_like(v)) for k, v in metrics.items()}
                for k, v in metrics.items():
                    sums[k] = sums[k] + v if k in sums else v.clone()
                count += 1
                step += 1
                self.bar.update(1)
                if count % loop.log_every == 0:
                    checked = self._check(sums, batch, checked, step, params=False)
                    if loop.progress:
                        self.bar.set_postfix({k: f"{(v / count).item():.3f}" for k, v in sums.items()}, refresh=False)
                if step >= loop.budget.total_steps:
                    break
                if loop.checkpoint is not None and loop.checkpoint_every and step % loop.checkpoint_every == 0:
                    checked = self._check(sums, batch, checked, step, params=True)
                    progress = self._progress(position, count, tic, skipped_before, sums, counts)
                    if distributed.is_main():
                        _save_checkpoint(run, loop.checkpoint, epoch, step, progress)
                    shards.barrier()
            per_epoch = loop.budget.batches_per_epoch
            if step >= loop.budget.total_steps and (per_epoch is None or position + 1 < per_epoch):
                self.unfinished = self._progress(position, count, tic, skipped_before, sums, counts)
                self.unfinished["recorded"] = True  # the history holds this epoch's record so far
            if count and batch is not None:
                self._check(sums, batch, checked, step, params=True)
            record = {"epoch": epoch + 1, "step": step, "seconds": time.perf_counter() - tic}
            run.config["step_path"] = self.step.describe()  # which path ran: compiled or eager, and why
            if counts:
                means = shards.mean(list(sums.values()), 1)
                steps_counted = shards.mean(list(counts.values()), 1)
                means = [m / c if c else float("nan") for m, c in zip(means, steps_counted)]
                record["skipped_updates"] = engine.skipped_updates - skipped_before
                empty = [k for k, c in zip(counts, steps_counted) if not c]
                if empty:
                    warnings.warn(
                        f"epoch {epoch + 1}: every step's {', '.join(empty)} was non-finite and every update was "
                        f"skipped ({record['skipped_updates']} skipped updates): the epoch's metrics are nan and the "
                        "parameters did not move. Lower the learning rate or look for the cause (skip_nonfinite=False "
                        "stops with a diagnosis)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            else:
                means = shards.mean(list(sums.values()), count)
            record.update(zip((f"train_{k}" for k in sums), means))
            if self.valid is not None and loop.validate_every and (epoch + 1) % loop.validate_every == 0:
                with checkpoints.preserved_rng():  # training continues on the random stream it would have without
                    objective = validation_objective(
                        method, run.programs, self.valid, shards, transform=transform, seed=loop.seed
                    )
                if objective is not None:
                    record[f"valid_{method.objective_name}"] = objective
        return record

    def _progress(
        self,
        position: int,
        count: int,
        tic: float,
        skipped_before: int,
        sums: dict[str, torch.Tensor],
        counts: dict[str, torch.Tensor],
    ) -> dict:
        """The state within an epoch that a mid-epoch checkpoint saves (see :meth:`train` for its use)."""
        return {
            "position": position + 1,
            "count": count,
            "seconds": time.perf_counter() - tic,
            "skipped": self.run.engine.skipped_updates - skipped_before,
            "sums": self.shards.shared(sums),
            "counts": self.shards.shared(counts),
        }

    def _check(self, sums: dict[str, torch.Tensor], batch: Data, checked: int, step: int, params: bool) -> int:
        """Raise :class:`TrainingDiverged` when a metric (or, with ``params``, a parameter) is not finite."""
        engine = self.run.engine
        if all_finite(list(sums.values())) and (not params or params_finite(engine)):
            return step
        checkpoint = self.loop.checkpoint
        where = str(checkpoint.parent) if checkpoint is not None and checkpoint.exists() else None
        raise diagnose(self.run.programs, engine, sums, batch, checked + 1, step, where)


@torch.no_grad()
def validation_objective(
    method: Method,
    programs: ProgramPair,
    x: Any,
    shards: _Shards | None = None,
    batch_size: int = 500,
    transform: RowTransform | None = None,
    seed: int = 0,
) -> float | None:
    """Mean of the method's per-datapoint objective over ``x`` (one host read at the end); ``None`` with no rows.

    ``x`` is rows in memory or a torch data set (read in chunks, ``transform`` drawn once per ``seed``). In a
    distributed fit (``shards``) every rank scores its block of each chunk and the sums are added up.
    """
    shards = shards or _Shards(programs, None)
    device = next((p.device for p in unconstrained_params().values()), None)
    total, rows = None, 0
    with pyro.validation_enabled(False):
        for i, (n, chunk) in enumerate(as_source(x).chunks(batch_size)):
            chunk = chunk.to(device) if device is not None else chunk
            if transform is not None:
                chunk = transform(chunk, noise_key(seed, -1, i), rank_rows(n), n)
            with shards.take(n, weigh=False):
                part = method.objective(programs, chunk).sum()
            total = part * shards.share if total is None else total + part * shards.share
            rows += n
    if total is None:
        return None
    return (distributed.all_reduce_sum(total) / rows).item()


class _Shards:
    """Splits global minibatches over the ranks of a distributed fit (a no-op in one process).

    Rank r takes block r of every batch's rows, with :class:`~ppdgm.distributed.ShardedSampling`
    active so its random draws are the ones a single process would make for those rows. A batch with
    fewer rows than ranks is taken whole by every rank (each computes the same gradient), which
    keeps the random streams in step; ``share`` then counts it once in sums.
    """

    def __init__(self, programs: ProgramPair, engine: Engine | None) -> None:
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.sync = engine.grad_sync if engine is not None else None
        self.programs = programs
        self.share = 1.0
        self.sampling = None
        if self.world_size > 1:
            self.sampling = distributed.ShardedSampling(programs.structure.data_plate)

    @contextlib.contextmanager
    def take(self, n: int, weigh: bool = True) -> Iterator[None]:
        """Sharded sampling for this rank's rows of a global batch of ``n`` (those :func:`~ppdgm.streams.rank_rows`
        gives, which the sources read), with the rank's weight and share set."""
        if self.sampling is None:
            yield
            return
        rows = rank_rows(n)
        if rows == slice(None):  # fewer rows than ranks: every rank takes them all
            self.share = 1.0 if self.rank == 0 else 0.0
            self._weigh(1.0, weigh)
            yield
            return
        offset, size = rows.start, rows.stop - rows.start
        self.share = 1.0
        self._weigh(size * self.world_size / n, weigh)
        self.programs.row_scale = n / size
        try:
            with self.sampling.rows(offset, size, n):
                yield
        finally:
            self.programs.row_scale = 1.0

    @property
    def weight(self) -> float:
        """This rank's rows over an equal share of the current batch: weighs its gradients and metrics."""
        return self.sync.weight if self.sync is not None else 1.0

    def _weigh(self, weight: float, weigh: bool) -> None:
        if weigh and self.sync is not None:
            self.sync.weight = weight

    def shared(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Metric sums over the ranks, divided by their number: what each rank restores from a mid-epoch checkpoint
        (so that the epoch's all-reduced means come out as if never interrupted)."""
        if self.world_size == 1 or not sums:
            return {k: v.detach().cpu() for k, v in sums.items()}
        stacked = distributed.all_reduce_sum(torch.stack([v.detach().double() for v in sums.values()]))
        return {k: (v / self.world_size).to(sums[k].dtype).cpu() for k, v in zip(sums, stacked)}

    def mean(self, values: list[torch.Tensor], count: int) -> list[float]:
        """Per-step metric sums → their means over steps and ranks, read to the host in one go."""
        if not values:
            return []
        stacked = distributed.all_reduce_sum(torch.stack([v.detach().double() for v in values]))
        stacked = stacked / (count * self.world_size)
        return stacked.tolist()

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def _to_device(tensors: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in tensors.items()}


def _save_checkpoint(run: Run, path: Path, epoch: int, step: int, partial: dict | None) -> None:
    """Write the training state; ``partial`` is the progress within epoch ``epoch`` (``None`` at an epoch's end,
    where ``epoch`` counts the completed epochs)."""
    checkpoints.save(
        {
            "epoch": epoch,
            "step": step,
            "partial": partial,
            "engine": run.engine.state_dict(),
            "method": run.method.state_dict(),
            "rng": checkpoints.rng_state(),
            "history": run.history,
            "seconds": run.seconds,
            "config": run.config,
        },
        path,
    )


#: what a checkpoint must agree on with the fit that resumes it (the run would be another run otherwise)
_FIXED = (
    "method", "method_options", "data", "columns", "obs_site", "batch_size", "seed", "optimizer", "shuffle",
    "transform", "arguments", "generated_rows", "auxiliary",
)  # fmt: skip
#: training settings a resumed fit may change with ``resume="override"`` (the new values then apply)
_OVERRIDABLE = ("lr", "optimizer_options", "lr_schedule", "precision", "step_kwargs")


def _data_change(saved: dict | None, current: dict | None) -> str:
    """What differs between two data fingerprints (:meth:`ppdgm.streams.Source.fingerprint`), in words; ``""`` when
    nothing does or the checkpoint has none (written before fingerprints)."""
    if saved is None or current is None or saved == current:
        return ""
    if saved.get("kind") != current.get("kind") or "sources" in saved or "sources" in current:
        if len(saved.get("sources", ())) == len(current.get("sources", ())) and "sources" in saved:
            parts = [_data_change(a, b) for a, b in zip(saved["sources"], current["sources"])]
            return "; ".join(f"source {i}: {p}" for i, p in enumerate(parts) if p)
        return f"{saved.get('kind')} -> {current.get('kind')}"
    words = []
    if saved.get("rows") != current.get("rows"):
        words.append(f"rows: {saved.get('rows')} -> {current.get('rows')}")
    if saved.get("columns") != current.get("columns"):
        words.append(f"columns: {saved.get('columns')} -> {current.get('columns')}")
    elif saved.get("sample") != current.get("sample"):
        words.append("other values in the sampled rows")
    if saved.get("sampling") != current.get("sampling"):
        words.append(f"sampler: {saved.get('sampling')} -> {current.get('sampling')}")
    return ", ".join(words) or "another data source"


def _restore(run: Run, path: Path, override: bool) -> tuple[int, int, dict | None]:
    state = checkpoints.load(path, "checkpoint", "delete it, or pass resume=False (CLI: a new --out), to start fresh")
    saved, current = state["config"], run.config
    fixed = [k for k in _FIXED if saved.get(k) != current.get(k)]
    if fixed:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in fixed)
        raise CheckpointError(
            f"the checkpoint {path} belongs to another run ({changes}); use another checkpoint_dir or resume=False"
        )
    changed = [k for k in _OVERRIDABLE if saved.get(k) != current.get(k)]
    if current["steps"] < state["step"] or current["steps"] < saved.get("steps", 0):
        changed.append("steps")
    data_change = _data_change(saved.get("data_identity"), current.get("data_identity"))
    if data_change and not override:
        raise CheckpointError(
            f"resuming {path} with other training data ({data_change}); pass resume='override' (CLI: --override) "
            "to continue on these data, or resume=False to start fresh"
        )
    if changed and not override:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"resuming {path} with other training settings ({changes}); only a longer budget resumes as is. Pass "
            "resume='override' (CLI: --override) to continue with the new settings, or resume=False to start fresh"
        )
    run.engine.load_state_dict(state["engine"])
    run.engine.apply_settings(current["optimizer_options"])
    run.method.load_state_dict(state["method"])
    checkpoints.set_rng_state(state["rng"])
    run.history[:] = state["history"]
    run.seconds = state["seconds"]
    partial = state.get("partial")
    if partial is not None and partial.get("recorded") and state["step"] < current["steps"]:
        run.seconds -= run.history.pop()["seconds"]  # the budget ended inside this epoch: continue its record
    return state["epoch"], state["step"], partial

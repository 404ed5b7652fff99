"""Training: :func:`fit` runs a method on a model/guide pair and returns a :class:`Run`.

Design points:

* Each fit runs in its own Pyro param-store scope, so two runs in one process never share (or
  silently alias) parameters with the same ``pyro.module`` names; the trained parameters are
  merged back into the global store when the fit ends.
* One torch optimizer per player (see :mod:`ppdgm.methods.base`).
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch

from ppdgm.compile.step import check_compile_mode
from ppdgm.data.dataset import Dataset
from ppdgm.data.named import as_dataset
from ppdgm.data.streams import as_source, is_stream, materialize
from ppdgm.data.transforms import RowTransform, get_transform
from ppdgm.errors import UsageError, positive_int
from ppdgm.methods.base import Method, get_method
from ppdgm.methods.engine import Engine
from ppdgm.programs.batch import Batch, Data, describe_columns
from ppdgm.programs.batch import batch_size as rows_of
from ppdgm.programs.pair import ProgramPair
from ppdgm.programs.sides import Auxiliary
from ppdgm.runtime import distributed
from ppdgm.runtime import storage as checkpoints
from ppdgm.runtime.devices import training_device
from ppdgm.runtime.precision import check_precision
from ppdgm.training.config import (
    Budget,
    check_fit_arguments,
    check_step_kwargs,
    function_name,
    plain_options,
    run_record,
)
from ppdgm.training.loop import Callback, TrainingLoop
from ppdgm.training.resume import CHECKPOINT_NAME
from ppdgm.training.run import Run, move_programs
from ppdgm.training.schedules import resolve_schedule


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
            torch ``Dataset``, ``IterableDataset`` or ``DataLoader`` (read in minibatches, :mod:`~ppdgm.data.streams`).
        method: a registered name (``ppdgm.available_methods()``) or a :class:`~ppdgm.methods.base.Method`;
            ``method_options`` go to its constructor.
        epochs, steps: the budget (default 10 epochs); with ``steps`` the last epoch may be partial.
        batch_size: the (global) minibatch size (default: a DataLoader's own, else 100).
        shuffle: a fresh seeded order every epoch (default: a DataLoader's own setting, else ``True``); an
            IterableDataset keeps its own order.
        transform: ``"binarize"`` (dynamic binarization), ``"dequantize"`` or a
            :class:`~ppdgm.data.transforms.RowTransform`,
            applied to each batch's first column (default: the data set's).
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
        compile: ``"auto"`` runs steps from recordings traced once per batch shape (:mod:`ppdgm.compile.step`), falling
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
            :class:`~ppdgm.programs.sides.Auxiliary`).

    Under ``torchrun`` the fit is data-parallel and equals one process to float tolerance (docs/scaling.md).

    Returns:
        A :class:`Run` with the trained programs, per-epoch history, timings and save/load.
    """
    check_fit_arguments(seed, log_every, validate_every, callbacks, checkpoint_dir, progress, validate, skip_nonfinite)
    check_compile_mode(compile)
    if resume not in (True, False, "override"):
        raise UsageError(f"resume must be True, False or 'override', got {resume!r}")
    if checkpoint_every is not None:
        positive_int("checkpoint_every", checkpoint_every)
        if checkpoint_dir is None:
            raise UsageError("checkpoint_every needs a checkpoint_dir to write the checkpoints to")
    if shuffle is not None and not isinstance(shuffle, bool):
        raise UsageError(f"shuffle must be True or False, got {shuffle!r}")
    step_kwargs = check_step_kwargs(step_kwargs)
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
    dev, ctx = training_device(device)
    check_precision(precision, dev)
    config = run_record(method_obj, dataset, budget, lr, optimizer, seed, dev, obs_site, lr_schedule, ctx, precision)
    config.update(
        optimizer_options=plain_options(optimizer_options),
        shuffle=shuffle,
        transform=None if transform is None else repr(transform),
        source=source.name,
        columns=describe_columns(first),
        data_identity=source.fingerprint(),
        step_kwargs={
            k: v if isinstance(v, int | float | str | bool | None) else repr(v) for k, v in step_kwargs.items()
        },
        arguments=None if arguments is None else function_name(arguments),
        generated_rows=None if generated_rows is None else function_name(generated_rows),
        auxiliary=[[function_name(pair.model), function_name(pair.guide), pair.weight] for pair in auxiliary_pairs]
        or None,
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
    move_programs(programs, names, dev, method.modules())
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

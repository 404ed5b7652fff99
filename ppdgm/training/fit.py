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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from ppdgm.data.dataset import Dataset
from ppdgm.data.named import as_dataset
from ppdgm.data.streams import is_stream, materialize
from ppdgm.errors import UsageError
from ppdgm.methods.base import Method, get_method
from ppdgm.methods.engine import Engine
from ppdgm.programs.batch import batch_size as rows_of
from ppdgm.programs.pair import ProgramPair
from ppdgm.runtime import distributed
from ppdgm.runtime import storage as checkpoints
from ppdgm.training.config import (
    FitPlan,
    TrainingConfig,
    run_record,
)
from ppdgm.training.loop import TrainingLoop
from ppdgm.training.resume import CHECKPOINT_NAME
from ppdgm.training.run import Run, move_programs
from ppdgm.training.schedules import resolve_schedule


def fit(model: Callable, guide: Callable | None, data: Any, method: str | Method = "vae", **options: Any) -> Run:
    """Train ``model`` and ``guide`` on ``data`` with the algorithm ``method`` (in full: docs/usage.md).

    Args:
        model, guide: Pyro programs, called with each batch as ``SVI.step`` calls them (``model(x)``,
            ``model(*columns)``, ``model(**columns)``, see :mod:`ppdgm.programs`); ``guide=None``: guide-less methods
        data: a data set name, a :class:`~ppdgm.data.Dataset`, a tensor of rows, a tuple/dict of columns, or a
            torch ``Dataset``, ``IterableDataset`` or ``DataLoader`` (read in minibatches, :mod:`~ppdgm.data.streams`).
        method: a registered name (``ppdgm.available_methods()``) or a :class:`~ppdgm.methods.base.Method`.
        options: the fields of :class:`~ppdgm.training.config.TrainingConfig` (``epochs``, ``lr``, ``seed``,
            ``checkpoint_dir``...; ``config=`` a whole one, the other keywords overriding its fields); every other
            keyword is an option of the method's constructor (``num_particles=5``).

    Under ``torchrun`` the fit is data-parallel and equals one process to float tolerance (docs/scaling.md).

    Returns:
        A :class:`Run` with the trained programs, per-epoch history, timings and save/load.
    """
    config = TrainingConfig.of(options.pop("config", None), **options)
    config.check()
    method_obj = get_method(method, **config.method_options)
    if method_obj.requires_guide and guide is None:
        raise UsageError(f"method {method_obj.name!r} needs a guide; got guide=None")
    dataset = as_dataset(data, config.data_dir)
    plan = FitPlan.of(config, dataset, method_obj)
    record = run_record(config, method_obj, dataset, plan)
    loop = TrainingLoop(
        budget=plan.budget,
        seed=config.seed,
        callbacks=tuple(config.callbacks),
        checkpoint=None if config.checkpoint_dir is None else Path(config.checkpoint_dir) / CHECKPOINT_NAME,
        resume=config.resume,
        validate_every=config.validate_every,
        progress=config.progress and distributed.is_main(),
        log_every=config.log_every,
        validate=config.validate,
        schedule=resolve_schedule(config.lr_schedule, plan.budget.num_epochs),
        precision=config.precision,
        shuffle=plan.shuffle,
        transform=plan.transform,
        checkpoint_every=config.checkpoint_every,
        compile=config.compile,
        step_kwargs=plan.step_kwargs,
    )
    pyro.set_rng_seed(config.seed)
    programs = ProgramPair(
        model,
        guide,
        obs_site=config.obs_site,
        data_plate=config.data_plate,
        partial_guide=method_obj.partial_guide,
        arguments=config.arguments,
        generated_rows=config.generated_rows,
        auxiliary=plan.auxiliary,
    )
    programs.step_kwargs = loop.step_arguments(0, 0)
    store = pyro.get_param_store()
    folder = config.checkpoint_dir
    writer = checkpoints.writing(folder) if folder is not None and distributed.is_main() else None
    with writer or contextlib.nullcontext(), store.scope() as scope_state:  # one writer per checkpoint folder
        # rows as_dataset has just found to be 0s and 1s, read untransformed (a flag given with a Dataset is checked)
        binary = dataset.binary and isinstance(data, torch.Tensor | np.ndarray) and plan.transform is None
        _inspect(programs, method_obj, dataset, plan, config.seed, binary)
        record["obs_site"] = programs.obs_site
        engine = _engine(programs, method_obj, plan, config)
        run = Run(model, guide, method_obj, programs, engine, dataset, plan.device, record, param_state=scope_state)
        loop.run(run)
    store.set_state(scope_state)
    return run


def _inspect(programs: ProgramPair, method: Method, dataset: Dataset, plan: FitPlan, seed: int, binary: bool) -> None:
    """Inspect the pair on the first batch, check the data, and let the method check the pair.

    Rows in memory are checked whole; a split read in minibatches (a torch data set) is checked on its first
    batch (the rest is checked as it is read: non-finite losses stop training, naming the site). ``binary``: the
    rows were just found to be 0s and 1s (:meth:`~ppdgm.programs.base.PairBase.inspect_data`).
    """
    first, transform = plan.first, plan.transform
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
    programs.inspect_data(first, splits, binary)
    method.check_programs(programs)
    method.setup(programs)


def _engine(programs: ProgramPair, method: Method, plan: FitPlan, config: TrainingConfig) -> Engine:
    """The players on the training device with their optimizers (gradients averaged over ranks when distributed)."""
    structure = programs.structure
    extra_players = method.extra_players()
    names = structure.model_param_names + structure.guide_param_names + sum(extra_players.values(), ())
    move_programs(programs, names, plan.device, method.modules())
    sync = distributed.GradientSync(plan.context) if plan.context is not None else None
    engine = Engine(
        programs,
        {"model": structure.model_param_names, "guide": structure.guide_param_names, **extra_players},
        optimizer=config.optimizer,
        lr=config.lr,
        optimizer_options=config.optimizer_options,
        extra_params=method.extra_params(),
        grad_sync=sync,
        skip_nonfinite=config.skip_nonfinite,
    )
    if sync is not None:
        sync.broadcast([p for player in engine.players.values() for p in player.params])
    return engine

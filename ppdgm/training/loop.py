"""The epochs of a fit: steps, metrics, validation, checkpoints, callbacks and the progress bar."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from ppdgm.compile.step import CompiledStep
from ppdgm.data.order import noise_key, rank_rows
from ppdgm.data.streams import TensorSource, as_source, is_stream
from ppdgm.data.transforms import RowTransform
from ppdgm.methods.base import Method
from ppdgm.methods.optimizers import implementation
from ppdgm.programs.batch import Data
from ppdgm.programs.handlers import unconstrained_params
from ppdgm.programs.pair import ProgramPair
from ppdgm.programs.sites import ConventionError, describe
from ppdgm.runtime import distributed
from ppdgm.runtime import storage as checkpoints
from ppdgm.runtime.devices import device_context
from ppdgm.runtime.precision import autocast
from ppdgm.training.config import Budget
from ppdgm.training.nonfinite import all_finite, diagnose, params_finite
from ppdgm.training.resume import restore, save_checkpoint
from ppdgm.training.run import Run
from ppdgm.training.shards import Shards

Callback = Callable[["Run", dict], Any]


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
            start_epoch, step, partial = restore(run, self.checkpoint, self.resume == "override")
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
                        save_checkpoint(run, self.checkpoint, index + (unfinished is None), step, unfinished)
                    epoch.shards.barrier()
                if any(cb(run, record) is True for cb in self.callbacks):
                    break
        except KeyboardInterrupt as interrupt:
            bar.close()
            checkpoint = self.checkpoint
            saved = checkpoint is not None and checkpoint.exists()
            where = f"; the checkpoint in {checkpoint.parent} resumes it" if checkpoint is not None and saved else ""
            raise TrainingInterrupted(f"interrupted after {len(run.history)} complete epoch(s){where}") from interrupt
        bar.close()


class _Epoch:
    """One epoch of steps over the training rows, then the epoch's record (metrics read once, validation)."""

    def __init__(self, loop: TrainingLoop, run: Run, bar: Any, start_step: int) -> None:
        self.loop, self.run, self.bar = loop, run, bar
        train, valid = run.dataset.train, run.dataset.valid
        self.source = TensorSource(train.to(run.device)) if not is_stream(train) else as_source(train)
        self.valid = valid.to(run.device) if valid is not None and not is_stream(valid) else valid
        self.shards = Shards(run.programs, run.engine)
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
        with device_context(dev):
            batches = self.source.batches(epoch, loop.budget.batch_size, loop.seed, loop.shuffle, start)
            self.step.epoch_start = True
            for position, (n, batch) in enumerate(batches, start):
                if loop.step_kwargs:
                    run.programs.step_kwargs = loop.step_arguments(step, epoch)
                batch = batch.to(dev, non_blocking=True)  # overlaps the copy when the loader pins memory
                if transform is not None:
                    batch = transform(batch, noise_key(loop.seed, epoch, position), rank_rows(n), n)
                if run.programs.select(batch):  # a batch of other columns (Interleaved streams): checked again
                    check_layout(method, run.programs, batch)
                    self.first_step = True
                with (
                    pyro.validation_enabled(loop.validate or self.first_step),
                    shards.take(n),
                    autocast(dev, loop.precision),
                ):
                    metrics = self.step(batch, self.context(n))
                self.first_step = False
                self._accumulate(metrics, sums, counts)
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
                        save_checkpoint(run, loop.checkpoint, epoch, step, progress)
                    shards.barrier()
            per_epoch = loop.budget.batches_per_epoch
            if step >= loop.budget.total_steps and (per_epoch is None or position + 1 < per_epoch):
                self.unfinished = self._progress(position, count, tic, skipped_before, sums, counts)
                self.unfinished["recorded"] = True  # the history holds this epoch's record so far
            if count and batch is not None:
                self._check(sums, batch, checked, step, params=True)
            record = {"epoch": epoch + 1, "step": step, "seconds": time.perf_counter() - tic}
            run.config["step_path"] = self.step.describe()  # which path ran: compiled or eager, and why
            record.update(self._means(epoch, record, sums, counts, count, skipped_before))
            if self.valid is not None and loop.validate_every and (epoch + 1) % loop.validate_every == 0:
                with checkpoints.preserved_rng():  # training continues on the random stream it would have without
                    objective = validation_objective(
                        method, run.programs, self.valid, shards, transform=transform, seed=loop.seed
                    )
                if objective is not None:
                    record[f"valid_{method.objective_name}"] = objective
        return record

    def _accumulate(self, metrics: dict[str, torch.Tensor], sums: dict, counts: dict) -> None:
        """Add one step's metrics (this rank's share) to the epoch's sums, on the device."""
        if self.shards.weight != 1.0:
            metrics = {k: v * self.shards.weight for k, v in metrics.items()}
        if self.run.engine.skip_nonfinite:  # a skipped step's non-finite metrics stay out of the means
            for k, v in metrics.items():
                finite = torch.isfinite(v)
                counts[k] = counts[k] + finite if k in counts else finite.double()
            metrics = {k: torch.where(torch.isfinite(v), v, torch.zeros_like(v)) for k, v in metrics.items()}
        for k, v in metrics.items():
            sums[k] = sums[k] + v if k in sums else v.clone()

    def _means(
        self, epoch: int, record: dict, sums: dict, counts: dict, count: int, skipped_before: int
    ) -> dict[str, float]:
        """The epoch's ``train_*`` means over steps and ranks (read once); skipped updates counted into ``record``."""
        shards, engine = self.shards, self.run.engine
        if not counts:
            return dict(zip((f"train_{k}" for k in sums), shards.mean(list(sums.values()), count)))
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
                stacklevel=3,
            )
        return dict(zip((f"train_{k}" for k in sums), means))

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
    shards: Shards | None = None,
    batch_size: int = 500,
    transform: RowTransform | None = None,
    seed: int = 0,
) -> float | None:
    """Mean of the method's per-datapoint objective over ``x`` (one host read at the end); ``None`` with no rows.

    ``x`` is rows in memory or a torch data set (read in chunks, ``transform`` drawn once per ``seed``). In a
    distributed fit (``shards``) every rank scores its block of each chunk and the sums are added up.
    """
    shards = shards or Shards(programs, None)
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


def _to_device(tensors: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in tensors.items()}


def check_layout(method: Method, programs: ProgramPair, batch: Data) -> None:
    """A batch whose columns differ from the first batch's was inspected: may the method train on both?"""
    if not method.several_layouts:
        raise ConventionError(
            f"method {method.name!r} trains on batches of one layout, but this batch {describe(batch)} has "
            "other columns than the first; vae and iwae train on several (e.g. labelled and unlabelled streams)"
        )
    method.check_programs(programs)
    method.setup(programs)

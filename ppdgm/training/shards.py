"""Global minibatches split over the ranks of a data-parallel fit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ppdgm.data.order import rank_rows
from ppdgm.methods.engine import Engine
from ppdgm.programs.pair import ProgramPair
from ppdgm.runtime import distributed


class Shards:
    """Splits global minibatches over the ranks of a distributed fit (a no-op in one process).

    Rank r takes block r of every batch's rows, with :class:`~ppdgm.runtime.distributed.ShardedSampling`
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
        """Sharded sampling for this rank's rows of a global batch of ``n`` (those :func:`~ppdgm.data.order.rank_rows`
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
        with self.programs.scaled_rows(n / size), self.sampling.rows(offset, size, n):
            yield

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

"""The order of a fit's rows: seeded epochs, a rank's block of each batch, and DataLoader samplers honoured."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import (
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from ppdgm.errors import UsageError
from ppdgm.runtime import distributed
from ppdgm.runtime.storage import digest

#: DataLoader options a stream keeps from a user's loader (its sampler, batch size and shuffle are ppdgm's)
LOADER_OPTIONS = (
    "num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn", "multiprocessing_context",
    "prefetch_factor", "persistent_workers", "pin_memory_device", "in_order",
)  # fmt: skip


def rank_rows(n: int) -> slice:
    """The rows of a global batch of ``n`` this process takes (all of them in one process, or with fewer rows
    than ranks: see :class:`ppdgm.training.shards._Shards`)."""
    world = distributed.world_size()
    if world == 1 or n < world:
        return slice(None)
    offset, size = distributed.block(n, distributed.rank(), world)
    return slice(offset, offset + size)


def noise_key(seed: int, epoch: int, batch: int) -> int:
    """A generator seed for the random transform of one batch (``epoch = -1``: evaluation splits)."""
    mixed = (seed + 1) * 0x9E3779B97F4A7C15 ^ (epoch + 2) * 0xC2B2AE3D27D4EB4F ^ (batch + 1) * 0x165667B19E3779F9
    return mixed % (2**63 - 1)


def epoch_order(
    num_rows: int, batch_size: int, seed: int, epoch: int, shuffle: bool, sampling: Sampling | None = None
) -> list[torch.Tensor]:
    """The index batches of epoch ``epoch``: a seeded permutation of the rows (or the rows in order), or the rows a
    DataLoader's sampler would draw (:class:`Sampling`) drawn from the same seeded generator, split."""
    gen = torch.Generator(device="cpu").manual_seed(seed * 100_003 + epoch)
    if sampling is not None:
        order = sampling.draw(num_rows, gen)
    elif shuffle:
        order = torch.randperm(num_rows, generator=gen, device="cpu")
    else:
        order = torch.arange(num_rows, device="cpu")
    return list(order.split(batch_size))


@dataclass(frozen=True)
class Sampling:
    """The rows a DataLoader's sampler draws in an epoch, drawn from ppdgm's seeded generator instead of the sampler's.

    ``RandomSampler(replacement=..., num_samples=...)``, ``WeightedRandomSampler`` and ``SubsetRandomSampler`` are
    honoured this way (their draws follow from the seed and the epoch, so a resumed or data-parallel fit reads the
    same rows); the plain ``RandomSampler`` and ``SequentialSampler`` are ppdgm's own shuffle on and off.
    """

    kind: str
    replacement: bool = False
    num_samples: int | None = None
    weights: torch.Tensor | None = None
    indices: torch.Tensor | None = None

    @classmethod
    def of(cls, sampler: Any) -> Sampling | None:
        """The sampling of ``sampler`` (``None``: ppdgm's plain shuffle or order); refuses samplers ppdgm cannot
        honour, naming them."""
        if isinstance(sampler, DistributedSampler):
            raise UsageError(
                "a DataLoader with a DistributedSampler: ppdgm splits each global batch over the ranks itself (every "
                "rank reads its block of the same seeded batches, docs/scaling.md); give the loader shuffle=True or "
                "False, or its dataset"
            )
        if isinstance(sampler, WeightedRandomSampler):
            return cls("weighted", bool(sampler.replacement), int(sampler.num_samples), weights=sampler.weights)
        if isinstance(sampler, SubsetRandomSampler):
            return cls("subset", indices=torch.as_tensor(list(sampler.indices), dtype=torch.long))
        if isinstance(sampler, RandomSampler):
            if not sampler.replacement and sampler._num_samples is None:
                return None
            return cls("random", bool(sampler.replacement), int(sampler.num_samples))
        if isinstance(sampler, SequentialSampler):
            return None
        raise UsageError(
            f"a DataLoader with a {type(sampler).__name__} cannot be read in ppdgm's seeded order; ppdgm honours "
            "RandomSampler (with replacement / num_samples), WeightedRandomSampler, SubsetRandomSampler and "
            "SequentialSampler, drawing their rows from the seed and the epoch so that a resumed or data-parallel "
            "fit reads the same batches; pass its dataset with shuffle=True/False instead"
        )

    def epoch_rows(self, num_rows: int) -> int:
        """Rows read in one epoch."""
        if self.kind == "subset":
            return int(self.indices.numel()) if self.indices is not None else 0
        return int(self.num_samples if self.num_samples is not None else num_rows)

    def draw(self, num_rows: int, gen: torch.Generator) -> torch.Tensor:
        """This epoch's row indices, as the sampler would draw them (its distribution, ppdgm's generator)."""
        if self.kind == "subset":
            assert self.indices is not None
            return self.indices[torch.randperm(self.indices.numel(), generator=gen)]
        count = self.epoch_rows(num_rows)
        if self.kind == "weighted":
            assert self.weights is not None
            return torch.multinomial(self.weights.double(), count, self.replacement, generator=gen)
        if self.replacement:
            return torch.randint(num_rows, (count,), generator=gen, dtype=torch.long)
        parts = [torch.randperm(num_rows, generator=gen) for _ in range(count // num_rows)]
        return torch.cat([*parts, torch.randperm(num_rows, generator=gen)[: count % num_rows]])

    def describe(self) -> dict[str, Any]:
        """Plain data for records and data fingerprints."""
        return {
            "sampler": self.kind,
            "replacement": self.replacement,
            "num_samples": self.num_samples,
            "weights": None if self.weights is None else digest(self.weights),
            "indices": None if self.indices is None else digest(self.indices),
        }

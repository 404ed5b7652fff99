"""Where a fit's minibatches come from: rows in memory, or a torch ``Dataset``, ``DataLoader`` or ``IterableDataset``.

Every source yields, for each step, the number of rows in the *global* minibatch and this process's
block of it (the whole batch in one process; block ``r`` of the rows on rank ``r`` of a data-parallel
fit), already converted to what the programs receive: a tensor, or a :class:`~ppdgm.programs.batch.Batch` of
columns when the items are tuples or dicts (torchvision's ``(image, label)`` pairs included).

The guarantees of in-memory training carry over:

* **Seeded order.** A map-style ``Dataset`` (and a ``DataLoader`` over one) is read in the order
  :func:`epoch_order` gives: a function of ``(seed, epoch)`` alone, the same permutation an in-memory
  tensor of the same rows gets, so both train to the same parameters. The loader's own workers,
  pinned memory, ``collate_fn``, prefetching and timeouts are kept; its sampler is replaced (a
  ``RandomSampler`` by the seeded permutation, a ``SequentialSampler`` by the rows in order).
* **Batched reads.** A data set with a ``read_batch(indices)`` method returning the batch's columns (such as
  :class:`ppdgm.data.images.ImageSet`) is read one gather per batch when no workers are asked for.
* **Resume mid-epoch.** A source can start an epoch at any batch: a map-style source skips the
  first batches' indices without reading them; an ``IterableDataset`` reads and drops them.
* **Data-parallel.** Each rank reads only its block's indices from a map-style source; from an
  ``IterableDataset`` each rank reads the global batch and keeps its block (its order is its own).
* **Random transforms** (:class:`DynamicBinarization`, :class:`Dequantization`) draw their noise from
  a generator keyed by ``(seed, epoch, batch)`` for the whole global batch, so the draws do not depend on
  the number of ranks, on workers, on a resume, nor on the training's random state.

Nothing needs the data set in memory: only the batches being read are.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import torch
from torch.utils.data import (
    DataLoader,
    IterableDataset,
    RandomSampler,
    default_collate,
)
from torch.utils.data import Dataset as TorchDataset

from ppdgm.data.collate import checked_collate, collated, diagnose_items, read_batches
from ppdgm.data.order import LOADER_OPTIONS, Sampling, epoch_order, noise_key, rank_rows
from ppdgm.data.transforms import RowTransform
from ppdgm.errors import UsageError
from ppdgm.programs.batch import Batch, Data, as_rows, first_column
from ppdgm.programs.batch import batch_size as rows_of
from ppdgm.runtime.storage import digest


class Source:
    """Rows of one split, read in minibatches (see the module docstring)."""

    def batches_per_epoch(self, batch_size: int) -> int | None:
        """Batches in one epoch (``None``: a stream of unknown length)."""
        if self.num_rows is None:
            return None
        rows = self.num_rows if self.sampling is None else self.sampling.epoch_rows(self.num_rows)
        return math.ceil(rows / batch_size)

    name = "rows"
    #: a DataLoader sampler's draws, honoured (``None``: ppdgm's shuffle or order)
    sampling: Sampling | None = None

    #: the number of rows, or ``None`` for an IterableDataset without ``__len__``
    num_rows: int | None = None
    #: the DataLoader's batch size when one was given (used when ``fit`` is given none)
    preferred_batch_size: int | None = None
    #: the DataLoader's shuffle (``None``: not set by the data)
    shuffle: bool | None = None

    def batches(
        self, epoch: int, batch_size: int, seed: int, shuffle: bool, start: int = 0, whole: bool = False
    ) -> Iterator[tuple[int, Data]]:
        """``(global rows, this rank's block)`` for batch ``start`` onwards of epoch ``epoch`` (``whole``: every
        row of each batch, whatever the rank)."""
        raise NotImplementedError

    def chunks(self, size: int, whole: bool = False) -> Iterator[tuple[int, Data]]:
        """The rows in order, in chunks of ``size`` (evaluation), as ``(global rows, this rank's block)``."""
        return self.batches(-1, size, 0, False, whole=whole)

    def head(self, n: int) -> Data:
        """The first ``n`` rows (inspection), the same on every rank (``None`` from a source without rows)."""
        return cast(Data, next(iter(self.chunks(n, whole=True)), (0, None))[1])

    def fingerprint(self) -> dict[str, Any]:
        """What identifies these rows cheaply: their count, their columns, a hash over a fixed sample of rows (up
        to :data:`FINGERPRINT_ROWS`, spread over the whole set) and the sampler's settings; a resumed fit compares
        it with its checkpoint's."""
        rows = self._sample_rows()
        return {
            "kind": self.name,
            "rows": self.num_rows,
            "columns": describe_rows(rows),
            "sample": digest_rows(rows),
            "sample_v1": digest_rows_v1(rows),
            "sampling": None if self.sampling is None else self.sampling.describe(),
        }

    def _sample_rows(self) -> Data:
        return self.head(FINGERPRINT_ROWS)


class TensorSource(Source):
    """Rows in memory (a tensor or a :class:`Batch`), indexed on their own device."""

    name = "tensor"

    num_rows: int

    def __init__(self, rows: Data) -> None:
        self.rows = rows
        self.num_rows = rows_of(rows)

    def batches(
        self, epoch: int, batch_size: int, seed: int, shuffle: bool, start: int = 0, whole: bool = False
    ) -> Iterator[tuple[int, Data]]:
        _, first = first_column(self.rows)
        for index in epoch_order(self.num_rows, batch_size, seed, epoch, shuffle)[start:]:
            n = index.shape[0]
            block = index if whole else index[rank_rows(n)]
            yield n, self.rows[block.to(first.device)]  # indexed where the rows are

    def chunks(self, size: int, whole: bool = False) -> Iterator[tuple[int, Data]]:
        for start in range(0, self.num_rows, size):
            chunk = self.rows[start : start + size]
            n = rows_of(chunk)
            yield n, chunk if whole else chunk[rank_rows(n)]

    def head(self, n: int) -> Data:
        return self.rows[:n]

    def _sample_rows(self) -> Data:
        index = sample_index(self.num_rows)
        return self.rows[index.to(first_column(self.rows)[1].device)]


def _loader_options(loader: DataLoader) -> dict[str, Any]:
    options = {}
    for name in LOADER_OPTIONS:
        if hasattr(loader, name):
            options[name] = getattr(loader, name)
    if options.get("num_workers", 0) == 0:  # these are only valid with workers
        for name in ("prefetch_factor", "persistent_workers"):
            options.pop(name, None)
    return options


class DatasetSource(Source):
    """A map-style torch ``Dataset`` read through a ``DataLoader`` whose batches follow ppdgm's seeded order."""

    name = "dataset"
    num_rows: int

    def __init__(self, dataset: TorchDataset, loader_options: Mapping[str, Any] | None = None) -> None:
        self.dataset = dataset
        try:
            self.num_rows = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise UsageError(f"a map-style Dataset needs __len__; {type(dataset).__name__} has none") from None
        if self.num_rows == 0:
            raise UsageError(f"the data set {type(dataset).__name__} is empty")
        self.options = dict(loader_options or {})

    @classmethod
    def from_loader(cls, loader: DataLoader) -> DatasetSource:
        if loader.batch_sampler is None:
            raise UsageError("a DataLoader with batch_size=None yields single items; give it a batch size")
        source = cls(loader.dataset, _loader_options(loader))
        source.preferred_batch_size = loader.batch_size
        source.sampling = Sampling.of(loader.sampler)
        source.shuffle = source.sampling is not None or isinstance(loader.sampler, RandomSampler)
        if loader.drop_last:
            raise UsageError("drop_last=True is not supported: every row is read once per epoch")
        return source

    def _read(self, blocks: Sequence[torch.Tensor], key: int) -> Iterator[Data]:
        if hasattr(self.dataset, "read_batch") and not self.options.get("num_workers"):
            for block in blocks:  # a data set that gathers whole batches (images.ImageSet): no per-item reads
                yield collated(self.dataset.read_batch(block))
            return
        options = dict(self.options)
        if options.get("collate_fn") in (None, default_collate):  # torch's would drop an odd item's extra dict keys
            options["collate_fn"] = checked_collate
        loader = DataLoader(
            self.dataset,
            batch_sampler=[b.tolist() for b in blocks],
            generator=torch.Generator().manual_seed(key),  # worker seeds; never the training's random state
            **options,
        )
        done = 0
        try:
            for rows in read_batches(loader):
                yield rows
                done += 1
        except UsageError:
            raise
        except Exception as err:  # a collate error or a worker's: find the item, reading the batch's items here
            named = diagnose_items(self.dataset, blocks[done].tolist()) if done < len(blocks) else None
            if named is None:
                raise
            raise named from err

    def batches(
        self, epoch: int, batch_size: int, seed: int, shuffle: bool, start: int = 0, whole: bool = False
    ) -> Iterator[tuple[int, Data]]:
        order = epoch_order(self.num_rows, batch_size, seed, epoch, shuffle, self.sampling)[start:]
        sizes = [index.shape[0] for index in order]
        blocks = [index if whole else index[rank_rows(n)] for index, n in zip(order, sizes)]
        yield from zip(sizes, self._read(blocks, noise_key(seed, epoch, start)))

    def _sample_rows(self) -> Data:
        return next(iter(self._read([sample_index(self.num_rows)], 0)))


class IterableSource(Source):
    """A torch ``IterableDataset``: its own order (``set_epoch(epoch)`` is called when it has one), batched here."""

    name = "iterable"

    def __init__(self, dataset: IterableDataset, loader_options: Mapping[str, Any] | None = None) -> None:
        self.dataset = dataset
        try:
            self.num_rows = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            self.num_rows = None
        self.options = dict(loader_options or {})

    @classmethod
    def from_loader(cls, loader: DataLoader) -> IterableSource:
        source = cls(loader.dataset, _loader_options(loader))  # type: ignore[arg-type]
        source.preferred_batch_size = loader.batch_size
        return source

    def batches(
        self, epoch: int, batch_size: int, seed: int, shuffle: bool, start: int = 0, whole: bool = False
    ) -> Iterator[tuple[int, Data]]:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        loader = DataLoader(
            self.dataset, batch_size=batch_size, generator=torch.Generator().manual_seed(noise_key(seed, epoch, 0)),
            **self.options,
        )  # fmt: skip
        for i, rows in enumerate(read_batches(loader)):
            if i < start:
                continue
            n = rows_of(rows)
            yield n, rows if whole else rows[rank_rows(n)]


class Interleaved(Source):
    """Several data sources read in one fit, their batches interleaved evenly through each epoch.

    Pyro's semi-supervised VAE steps on a labelled loader yielding ``(xs, ys)`` and an unlabelled one yielding
    ``xs``, a labelled batch every few unlabelled ones: ``Interleaved(labelled, unlabelled)`` gives that epoch (every
    batch of each source once, a source's batches spread evenly among the others') and each batch reaches the
    programs as its source gives it, ``model(xs, ys)`` or ``model(xs)``. Each source is any data ``fit`` takes (rows
    in memory, a torch ``Dataset`` or ``DataLoader``) with its own seeded order; the order of the epoch is a
    function of the seed and the epoch alone, so a fit resumes mid-epoch bit for bit.

    A minibatch of the fit's ``batch_size`` is drawn from one source at a time. Methods that score each batch with its
    own trace (``vae``, ``iwae``) train on batches of several layouts; others refuse them by name.
    """

    name = "interleaved"

    def __init__(self, *sources: Any) -> None:
        if len(sources) < 2:
            raise UsageError(f"Interleaved needs two or more data sources, got {len(sources)}")
        self.sources = [as_source(source if is_stream(source) else as_rows(source)) for source in sources]
        unknown = [i for i, source in enumerate(self.sources) if source.num_rows is None]
        if unknown:
            raise UsageError(
                f"Interleaved needs the length of every source to spread their batches over an epoch; source(s) "
                f"{unknown} have no __len__ (an IterableDataset)"
            )
        self.num_rows = sum(int(source.num_rows or 0) for source in self.sources)
        self.preferred_batch_size = self.sources[0].preferred_batch_size

    def _counts(self, batch_size: int) -> list[int]:
        """Batches per epoch of each source (every source has a length: see ``__init__``)."""
        return [int(source.batches_per_epoch(batch_size) or 0) for source in self.sources]

    def batches_per_epoch(self, batch_size: int) -> int:
        return sum(self._counts(batch_size))

    def order(self, batch_size: int) -> list[int]:
        """Which source each batch of an epoch comes from: source i's j-th batch at (j + 1/2) / m_i of the epoch."""
        counts = self._counts(batch_size)
        places = [((j + 0.5) / m, i) for i, m in enumerate(counts) for j in range(m)]
        return [i for _, i in sorted(places)]

    def batches(
        self, epoch: int, batch_size: int, seed: int, shuffle: bool, start: int = 0, whole: bool = False
    ) -> Iterator[tuple[int, Data]]:
        order = self.order(batch_size)
        skipped = [order[:start].count(i) for i in range(len(self.sources))]
        readers = [
            source.batches(epoch, batch_size, seed * len(self.sources) + i, shuffle, skipped[i], whole)
            for i, source in enumerate(self.sources)
        ]
        for i in order[start:]:
            yield next(readers[i])

    def chunks(self, size: int, whole: bool = False) -> Iterator[tuple[int, Data]]:
        for source in self.sources:
            yield from source.chunks(size, whole)

    def head(self, n: int) -> Data:
        return self.sources[self.order(n)[0]].head(n)

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.name, "sources": [source.fingerprint() for source in self.sources]}


#: rows a data fingerprint hashes, spread evenly over the data set (first and last included)
FINGERPRINT_ROWS = 64


def sample_index(num_rows: int) -> torch.Tensor:
    """The rows a fingerprint hashes: up to :data:`FINGERPRINT_ROWS`, evenly spread, the first and the last."""
    count = min(num_rows, FINGERPRINT_ROWS)
    return torch.linspace(0, num_rows - 1, count).round().long().unique()


def describe_rows(rows: Data) -> list[list[Any]]:
    """Each column's key, per-row shape and dtype."""
    items = rows.items() if isinstance(rows, Batch) else [(0, rows)]
    return [[key, list(c.shape[1:]), str(c.dtype)] for key, c in items if c is not None]


def digest_rows(rows: Data) -> str:
    """A SHA-256 over the rows' columns (dtype, shape and bytes)."""
    return digest(dict(rows.items()) if isinstance(rows, Batch) else rows)


def digest_rows_v1(rows: Data) -> str:
    """The rows' hash as checkpoints written before 2026-12-05 hold it (a SHA-256 over each column's own digest), so
    that a fit resumes them: :func:`ppdgm.training.resume.restore` accepts either form."""
    items = rows.items() if isinstance(rows, Batch) else [(0, rows)]
    h = hashlib.sha256()
    for key, column in items:
        h.update(f"{key!r}:{digest(column) if column is not None else None};".encode())
    return h.hexdigest()


def as_source(data: Any) -> Source:
    """A :class:`Source` for rows in memory, a torch ``Dataset``, ``IterableDataset`` or ``DataLoader``."""
    if isinstance(data, Source):
        return data
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            return IterableSource.from_loader(data)
        return DatasetSource.from_loader(data)
    if isinstance(data, IterableDataset):
        return IterableSource(data)
    if isinstance(data, TorchDataset):
        return DatasetSource(data)
    return TensorSource(data)


def is_stream(data: Any) -> bool:
    """Whether ``data`` is read through a DataLoader (a torch Dataset, DataLoader, or a non-tensor Source)."""
    return isinstance(data, TorchDataset | DataLoader) or (
        isinstance(data, Source) and not isinstance(data, TensorSource)
    )


def materialize(
    data: Any, limit: int | None = None, chunk: int = 1000, transform: RowTransform | None = None, seed: int = 0
) -> Data:
    """The rows of ``data`` (rows in memory, a Source or a torch data set) in memory, in order, up to ``limit``,
    with ``transform`` drawn once for ``seed`` (the fixed draw evaluation splits get)."""
    if (torch.is_tensor(data) or isinstance(data, Batch)) and (transform is None or rows_of(data) == 0):
        return data if limit is None else data[:limit]
    parts: list[Data] = []
    taken = 0
    if limit is not None:
        chunk = min(chunk, limit)
    for i, (n, rows) in enumerate(as_source(data).chunks(chunk, whole=True)):
        if limit is not None and taken + n > limit:
            rows, n = rows[: limit - taken], limit - taken
        if transform is not None:
            rows = transform(rows, noise_key(seed, -1, i), slice(None), n)
        parts.append(rows)
        taken += n
        if limit is not None and taken >= limit:
            break
    if not parts:
        raise UsageError("the data set has no rows")
    return concat(parts)


def concat(parts: Sequence[Data]) -> Data:
    """Rows of several batches, one after the other (tensors, or batches of the same columns)."""
    if torch.is_tensor(parts[0]):
        return torch.cat(list(parts))  # type: ignore[arg-type]
    keys = [k for k, _ in parts[0].items()]
    columns = {k: torch.cat([cast(torch.Tensor, p.get(k)) for p in parts]) for k in keys}  # type: ignore[union-attr]
    return Batch([columns[k] for k in keys if isinstance(k, int)], {k: columns[k] for k in keys if isinstance(k, str)})

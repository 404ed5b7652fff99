"""Where a fit's minibatches come from: rows in memory, or a torch ``Dataset``, ``DataLoader`` or ``IterableDataset``.

Every source yields, for each step, the number of rows in the *global* minibatch and this process's
block of it (the whole batch in one process; block ``r`` of the rows on rank ``r`` of a data-parallel
fit), already converted to what the programs receive: a tensor, or a :class:`~ppdgm.batch.Batch` of
columns when the items are tuples or dicts (torchvision's ``(image, label)`` pairs included).

The guarantees of in-memory training carry over:

* **Seeded order.** A map-style ``Dataset`` (and a ``DataLoader`` over one) is read in the order
  :func:`epoch_order` gives: a function of ``(seed, epoch)`` alone, the same permutation an in-memory
  tensor of the same rows gets, so both train to the same parameters. The loader's own workers,
  pinned memory, ``collate_fn``, prefetching and timeouts are kept; its sampler is replaced (a
  ``RandomSampler`` by the seeded permutation, a ``SequentialSampler`` by the rows in order).
* **Batched reads.** A data set with a ``read_batch(indices)`` method returning the batch's columns (such as
  :class:`ppdgm.images.ImageSet`) is read one gather per batch when no workers are asked for.
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

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
    default_collate,
)
from torch.utils.data import Dataset as TorchDataset

from ppdgm import distributed
from ppdgm.batch import Batch, Data, as_rows, first_column
from ppdgm.batch import batch_size as rows_of
from ppdgm.checkpoints import digest
from ppdgm.errors import UsageError

#: DataLoader options a stream keeps from a user's loader (its sampler, batch size and shuffle are ppdgm's)
LOADER_OPTIONS = (
    "num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn", "multiprocessing_context",
    "prefetch_factor", "persistent_workers", "pin_memory_device", "in_order",
)  # fmt: skip


def rank_rows(n: int) -> slice:
    """The rows of a global batch of ``n`` this process takes (all of them in one process, or with fewer rows
    than ranks: see :class:`ppdgm.train._Shards`)."""
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


class RowTransform:
    """A random transform of the first data column, applied to each batch as it is read.

    Subclasses implement :meth:`apply` on rows and uniform noise of the same shape; the noise of a batch
    is drawn for the whole global batch from ``noise_key(seed, epoch, batch)`` and sliced to this rank's rows.
    """

    name = "transform"

    def apply(self, rows: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data: Data, key: int, rows: slice, n: int) -> Data:
        first_key, first = first_column(data)
        gen = torch.Generator(device="cpu").manual_seed(key)
        if not first.is_floating_point():
            raise UsageError(f"{self.name} needs floating-point pixel values in [0, 1], got {first.dtype}")
        uniform = torch.rand((n, *first.shape[1:]), generator=gen, dtype=torch.float32)[rows]
        out = self.apply(first, uniform.to(first.device, first.dtype))
        return out if torch.is_tensor(data) else data.replace({first_key: out})

    def __repr__(self) -> str:
        return self.name


class DynamicBinarization(RowTransform):
    """x ~ Bernoulli(pixel intensity), drawn afresh every epoch: the dynamic binarization of Burda et al. (2016).

    Evaluation splits get one fixed draw per seed.
    """

    name = "binarize"

    def apply(self, rows: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        return (uniform < rows).to(rows.dtype)


class Dequantization(RowTransform):
    """Uniform dequantization of 8-bit pixels given in [0, 1]: (round(255 x) + u) / 256, u ~ U(0, 1).

    A continuous density on the result relates to the discrete one of the 8-bit values by
    log P(x_8bit) >= E_u log p((x_8bit + u) / 256) - D log 256 (Theis et al., 2016).
    """

    name = "dequantize"

    def apply(self, rows: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        return ((rows * 255).round() + uniform) / 256


TRANSFORMS: dict[str, Callable[[], RowTransform]] = {"binarize": DynamicBinarization, "dequantize": Dequantization}


def get_transform(transform: str | RowTransform | None) -> RowTransform | None:
    """A transform from its name (``"binarize"``, ``"dequantize"``), an instance, or ``None``."""
    if transform is None or isinstance(transform, RowTransform):
        return transform
    try:
        return TRANSFORMS[transform]()
    except (KeyError, TypeError):
        raise UsageError(f"unknown transform {transform!r}; known: {', '.join(TRANSFORMS)} or a RowTransform") from None


def _read_batches(loader: DataLoader) -> Iterator[Data]:
    """A loader's batches as ppdgm rows, with a hint when its items do not collate into tensors."""
    iterator = iter(loader)
    try:
        while True:
            try:
                raw = next(iterator)
            except StopIteration:
                return
            except TypeError as err:
                if "collate" not in str(err):
                    raise
                raise UsageError(
                    f"the data set's items do not collate into tensors ({err}); add a transform that turns them into "
                    "tensors (e.g. torchvision's ToTensor)"
                ) from err
            yield collated(raw)
    finally:  # workers stop now, not when the iterator is collected (maybe in a later loader's forked worker)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _structure(item: Any) -> Any:
    """What must agree between items to batch them: tensors' shapes and dtypes, tuples' lengths, dicts' keys."""
    if torch.is_tensor(item):
        return ("tensor", tuple(item.shape), str(item.dtype))
    if isinstance(item, tuple | list):
        return ("tuple", len(item), tuple(_structure(v) for v in item))
    if isinstance(item, Mapping):
        return ("dict", tuple(sorted(map(str, item))), tuple(_structure(item[k]) for k in sorted(item, key=str)))
    if isinstance(item, int | float | bool):
        return ("number",)
    return (type(item).__name__,)


def _described(structure: Any) -> str:
    kind = structure[0]
    if kind == "tensor":
        return f"a tensor of shape {list(structure[1])} ({structure[2]})"
    if kind == "tuple":
        return f"a {structure[1]}-tuple of ({', '.join(_described(s) for s in structure[2])})"
    if kind == "dict":
        return f"a dict with keys {list(structure[1])}"
    return f"a {kind}"


def checked_collate(batch: Sequence[Any]) -> Any:
    """torch's ``default_collate``, after checking that every item has the first one's structure (torch's uses the
    first item's dict keys and would drop another item's extra keys without a word)."""
    first = _structure(batch[0]) if len(batch) else None
    if any(_structure(item) != first for item in batch[1:]):
        raise ValueError("the batch's items differ in structure")  # the reader names the item (_diagnose)
    return default_collate(list(batch))


def _diagnose(dataset: Any, indices: Sequence[int]) -> UsageError | None:
    """The first item of a batch that cannot be read, or that differs in structure from the batch's first item."""
    first: tuple[int, Any] | None = None
    for i in indices:
        try:
            item = dataset[i]
        except Exception as err:
            return UsageError(f"reading item {i} of the data set raised {type(err).__name__}: {err}")
        structure = _structure(item)
        if first is None:
            first = (i, structure)
        elif structure != first[1]:
            return UsageError(
                f"item {i} of the data set is {_described(structure)}, but item {first[0]} of the same batch is "
                f"{_described(first[1])}: items must have one structure to be batched"
            )
    return None


def collated(raw: Any) -> Data:
    """A collated DataLoader batch as ppdgm rows: a tensor, or a :class:`Batch` for tuples, lists and dicts."""
    if isinstance(raw, Batch) or torch.is_tensor(raw):
        return raw
    if isinstance(raw, tuple | list) and len(raw) == 1 and torch.is_tensor(raw[0]):
        return raw[0]  # a TensorDataset of one tensor: plain rows, as a tensor given directly
    if isinstance(raw, tuple | list | Mapping):
        return as_rows(tuple(raw) if isinstance(raw, list) else raw)
    raise UsageError(
        f"a data set's batches must collate to a tensor, a tuple/list or a dict of tensors, got {type(raw).__name__}; "
        "add a transform that turns its items into tensors (e.g. torchvision's ToTensor)"
    )


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
        """The first ``n`` rows (inspection), the same on every rank."""
        return next(iter(self.chunks(n, whole=True)), (0, None))[1]

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
            "sampling": None if self.sampling is None else self.sampling.describe(),
        }

    def _sample_rows(self) -> Data:
        return self.head(FINGERPRINT_ROWS)


class TensorSource(Source):
    """Rows in memory (a tensor or a :class:`Batch`), indexed on their own device."""

    name = "tensor"

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
            for block in blocks:  # a data set that gathers whole batches (ppdgm.images.ImageSet): no per-item reads
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
            for rows in _read_batches(loader):
                yield rows
                done += 1
        except UsageError:
            raise
        except Exception as err:  # a collate error or a worker's: find the item, reading the batch's items here
            named = _diagnose(self.dataset, blocks[done].tolist()) if done < len(blocks) else None
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
        for i, rows in enumerate(_read_batches(loader)):
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
    columns = {k: torch.cat([p.get(k) for p in parts]) for k in keys}  # type: ignore[union-attr]
    return Batch([columns[k] for k in keys if isinstance(k, int)], {k: columns[k] for k in keys if isinstance(k, str)})

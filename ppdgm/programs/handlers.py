"""Every effect handler ppdgm adds to Pyro's, and the one place that reads Pyro's param store internals.

* :class:`StoreParams` answers ``pyro.param`` straight from the param store in the hot loop;
* :class:`Reverse` flips a discriminator's observed indicator: q(y | x) becomes q^r(y | x) = q(1 - y | x);
* :class:`Float32Sites` hands every sample site float32 parameters under bfloat16 autocast;
* :class:`ShardedSampling` draws data-plate sites for the global batch and keeps a rank's rows.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any, cast

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch import Independent
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from pyro.poutine.util import site_is_subsample
from torch.distributions import transform_to


def distribution_of(site: Message | dict) -> Any:
    """A sample site's distribution: Pyro's message type calls ``fn`` any callable."""
    return site["fn"]


def value_of(site: Message | dict) -> torch.Tensor:
    """The value of a traced sample site (Pyro types it optional: a site not yet run has none)."""
    return cast(torch.Tensor, site["value"])


def unconstrained_params() -> dict[str, torch.Tensor]:
    """The param store's leaf tensors by name (what optimizers step), as the store's live mapping.

    ``ParamStoreDict.named_parameters()`` is a view of the same mapping; ppdgm needs lookups by name in
    the hot loop, so this is the one function that reads the store's private dict.
    """
    return pyro.get_param_store()._params


def constraint_name(name: str) -> str | None:
    """The name in ``pyro.distributions.constraints`` of parameter ``name``'s constraint (``None``: not one of its
    singletons, such as ``interval(0, 2)``): what a checkpoint records to create the parameter again."""
    constraint = pyro.get_param_store()._constraints.get(name)
    return next((key for key, value in vars(constraints).items() if value is constraint), None)


def create_param(name: str, unconstrained: torch.Tensor, constraint: str) -> None:
    """Create parameter ``name`` in the param store from its unconstrained value and its constraint's name (the
    value through the constraint's transform and back: a checkpoint's exact values are copied in afterwards)."""
    chosen = getattr(constraints, constraint)
    pyro.get_param_store().setdefault(name, transform_to(chosen)(unconstrained.detach()), chosen)


class StoreParams(Messenger):
    """Answer ``pyro.param`` (and so ``pyro.module``) straight from the param store, unrecorded.

    Once :meth:`ProgramPair.inspect` has fixed the players, the hot loop need not send every
    parameter through the whole handler stack (trace, replay, plates) on every call: as the
    innermost handler this one answers known parameters and stops the message. A parameter the
    store does not hold yet falls through to Pyro's default behaviour.

    Args:
        owned: the parameter names the players own; a name outside it is written to ``unowned`` with ``program``
            (a parameter the program creates or first uses after the players were made: the engine adopts it).
    """

    def __init__(
        self, owned: set[str] | None = None, unowned: dict[str, str] | None = None, program: str = "model"
    ) -> None:
        super().__init__()
        self._store = pyro.get_param_store()
        self._owned, self._unowned, self._program = owned, unowned, program

    def _pyro_param(self, msg: Message) -> None:
        name = cast(str, msg["name"])
        if self._owned is not None and self._unowned is not None and name not in self._owned:
            self._unowned.setdefault(name, self._program)
        store = self._store  # the hot loop: the store's dicts read directly (this module is their one reader)
        unconstrained = store._params.get(name)
        if unconstrained is None:
            return
        if store._constraints[name] is constraints.real:
            msg["value"] = unconstrained
        else:
            msg["value"] = self._store[name]
        msg["done"] = True
        msg["stop"] = True


class Reverse(Messenger):
    """Effect handler that flips the observed binary indicator at ``site``: turns q(y | x) into q(1 - y | x).

    Under the handler ``pyro.sample("y", d, obs=y)`` observes ``1 - y``, so any trace or log-probability
    taken of the program is that of the reversed discriminator :math:`q^r(y \\mid x) = q(1 - y \\mid x)`.
    """

    def __init__(self, site: str = "y") -> None:
        super().__init__()
        self.site = site

    def _pyro_sample(self, msg: Message) -> None:
        if msg["name"] == self.site and msg["is_observed"]:
            msg["value"] = 1 - value_of(msg)


_LOW = (torch.bfloat16, torch.float16)


def _to_float32(fn: Any) -> Any:
    base = getattr(fn, "base_dist", None)
    if base is not None:
        new_base = _to_float32(base)
        if new_base is base:
            return fn
        new = copy.copy(fn)
        new.base_dist = new_base
        return new
    if not any(isinstance(v, torch.Tensor) and v.dtype in _LOW for v in vars(fn).values()):
        return fn
    return with_params(fn, lambda v: v.float() if v.dtype in _LOW else v)


class Float32Sites(Messenger):
    """Give every sample site's distribution float32 parameters (autocast leaves network outputs in bfloat16)."""

    def _process_message(self, msg: Message) -> None:
        if msg["type"] == "sample":
            msg["fn"] = _to_float32(distribution_of(msg))


class ShardedSampling(Messenger):
    """Draws data-plate sites for the whole global batch and keeps this rank's block of rows.

    Inside :meth:`rows`, an unobserved sample site in the plate ``data_plate`` whose local size is
    this rank's block is sampled from the same distribution widened to the global batch (the
    block's parameters placed at the block's offset), and the block is cut back out. The random
    stream advances exactly as one process drawing the global batch would, and the block's values
    are the ones that process would draw for these rows.
    """

    def __init__(self, data_plate: str) -> None:
        super().__init__()
        self.data_plate = data_plate
        self._rows: tuple[int, int, int] | None = None

    @contextlib.contextmanager
    def rows(self, offset: int, size: int, global_size: int) -> Iterator[None]:
        """Shard sites of local size ``size`` as rows ``offset:offset+size`` of ``global_size``."""
        self._rows = (offset, size, global_size)
        try:
            with self:
                yield
        finally:
            self._rows = None

    def _process_message(self, msg: Message) -> None:
        if (
            self._rows is None
            or msg["type"] != "sample"
            or msg["is_observed"]
            or msg["done"]
            or msg["value"] is not None
            or site_is_subsample(msg)
        ):
            return
        frame = next((f for f in msg["cond_indep_stack"] if f.name == self.data_plate), None)
        offset, size, global_size = self._rows
        if frame is None or size == global_size:
            return
        fn = distribution_of(msg)
        if isinstance(fn, dist.Delta) or (isinstance(fn, Independent) and isinstance(fn.base_dist, dist.Delta)):
            return  # no randomness: the local value is the global block already
        batch_shape = fn.batch_shape
        pos = len(batch_shape) + cast(int, frame.dim)
        if pos < 0 or batch_shape[pos] != size:
            return
        index = (torch.arange(global_size, device=_device_of(fn)) - offset) % size
        try:
            wide = _widen(fn, pos, index)
        except _CannotWiden as err:
            raise NotImplementedError(
                f"distributed sampling cannot widen site {msg['name']!r} ({err}) to the global batch; "
                "use a standard distribution (Normal, Bernoulli, Categorical, ...) there or train in one process"
            ) from None
        value = wide(*msg["args"], **msg["kwargs"])
        value_pos = value.dim() - len(fn.event_shape) - len(batch_shape) + pos
        msg["value"] = value.narrow(value_pos, offset, size)
        msg["done"] = True


class _CannotWiden(Exception):
    pass


def _device_of(fn: torch.distributions.Distribution) -> torch.device:
    for value in _params(fn).values():
        return value.device
    base = getattr(fn, "base_dist", None)
    return _device_of(base) if base is not None else torch.device("cpu")


def _params(fn: torch.distributions.Distribution) -> dict[str, torch.Tensor]:
    return {k: v for k, v in vars(fn).items() if isinstance(v, torch.Tensor)}


def _widen(fn: Any, pos: int, index: torch.Tensor) -> Any:
    """``fn`` with batch dimension ``pos`` indexed by ``index`` (a gather of its parameters)."""
    new_shape = list(fn.batch_shape)
    new_shape[pos] = index.numel()
    if isinstance(fn, Independent):
        return dist.Independent(_widen(fn.base_dist, pos, index), fn.reinterpreted_batch_ndims)
    if isinstance(fn, dist.MaskedDistribution):
        mask = fn._mask
        if isinstance(mask, torch.Tensor):
            mask = mask.expand(fn.batch_shape).index_select(pos, index)
        return dist.MaskedDistribution(_widen(fn.base_dist, pos, index), mask)
    if isinstance(fn, dist.ExpandedDistribution):
        base = fn.base_dist
        offset = len(fn.batch_shape) - len(base.batch_shape)
        base_pos = pos - offset
        if base_pos >= 0 and base.batch_shape[base_pos] != 1:
            base = _widen(base, base_pos, index)
        return base.expand(torch.Size(new_shape))
    if hasattr(fn, "base_dist"):
        raise _CannotWiden(f"{type(fn).__name__} wraps another distribution")
    batch = tuple(fn.batch_shape)

    def take(value: torch.Tensor) -> torch.Tensor:
        # parameters of shape batch + event are gathered; others (scalars, event-only) broadcast as they are
        return value.index_select(pos, index) if tuple(value.shape[: len(batch)]) == batch else value

    return with_params(fn, take, torch.Size(new_shape))


def with_params(
    fn: torch.distributions.Distribution,
    transform: Callable[[torch.Tensor], torch.Tensor],
    batch_shape: torch.Size | None = None,
) -> torch.distributions.Distribution:
    """A copy of the leaf distribution ``fn`` with every tensor attribute passed through ``transform``.

    Torch distributions keep their parameters (and cached lazy properties) as tensor attributes, so
    this rebuilds any of them without knowing its constructor.
    """
    new = type(fn).__new__(type(fn))
    new.__dict__.update(vars(fn))
    for key, value in _params(fn).items():
        setattr(new, key, transform(value))
    if batch_shape is not None:
        new._batch_shape = batch_shape
    return new

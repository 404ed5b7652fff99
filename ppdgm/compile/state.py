"""The state a recording reads and writes: tree leaves, snapshots, generator states and their comparison."""

from __future__ import annotations

import copy
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ppdgm.programs.batch import Batch, Data

#: tolerance of a recording's checks against the step it was recorded from and the eager step
RTOL, ATOL = 1e-5, 1e-6


# ---------------------------------------------------------------------------------------------- state
def leaves(tree: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """``(path, leaf)`` of a nested dict/list/tuple (a method's state dict)."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from leaves(value, (*path, key))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from leaves(value, (*path, i))
    else:
        yield path, tree


def replace_leaves(tree: Any, values: Mapping[tuple, Any], path: tuple = ()) -> Any:
    if path in values:
        return values[path]
    if isinstance(tree, Mapping):
        return {k: replace_leaves(v, values, (*path, k)) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(replace_leaves(v, values, (*path, i)) for i, v in enumerate(tree))
    return tree


def signature_of(value: Any) -> Hashable:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype, value.device, value.requires_grad)
    return None if value is None else type(value).__name__


def data_leaves(x: Data) -> list[torch.Tensor]:
    """The tensors of a batch, in a fixed order (absent columns left out)."""
    if isinstance(x, Batch):
        return [column for _, column in x.items() if column is not None]
    return [x]


def data_signature(x: Data) -> Hashable:
    if isinstance(x, Batch):
        return tuple((key, signature_of(column)) for key, column in x.items())
    return signature_of(x)


def _modules(engine: Any, method: Any) -> list[torch.nn.Module]:
    programs = engine.programs
    candidates = [programs.model, programs.guide, *method.modules()]
    return [m for m in candidates if isinstance(m, torch.nn.Module)]


@dataclass
class Observed:
    """What a check compares after a step: the parameters, the method's state and the module buffers (not the
    optimizer states or generator state, which a :class:`Snapshot` also holds to restore them)."""

    params: list[torch.Tensor]
    state: Any
    buffers: list[torch.Tensor]

    @classmethod
    def live(cls, engine: Any, method: Any) -> Observed:
        """The live tensors, to compare before anything else runs."""
        buffers = [b.detach() for m in _modules(engine, method) for b in m.buffers()]
        return cls(all_params(engine), method.state_dict(), buffers)

    @classmethod
    def copied(cls, engine: Any, method: Any) -> Observed:
        """A copy, to compare with after later steps."""
        return cls.live(engine, method).copy()

    def copy(self) -> Observed:
        return Observed(
            [p.detach().clone() for p in self.params], _clone_tree(self.state), [b.clone() for b in self.buffers]
        )


@dataclass
class Snapshot:
    """Everything a step changes, to run a step twice from the same point: a copy of what a check compares, the
    method's live state (to restore into the same tensors), optimizer states, generator state, skipped updates."""

    saved: Observed
    live_state: dict
    optimizers: dict[str, dict]
    rng: tuple[torch.Tensor, list[torch.Tensor]]
    skipped: int = 0

    @classmethod
    def take(cls, engine: Any, method: Any) -> Snapshot:
        live = Observed.live(engine, method)
        return cls(
            saved=live.copy(),
            live_state=live.state,
            optimizers={n: copy.deepcopy(p.optimizer.state_dict()) for n, p in engine.players.items()},
            rng=generator_state(),
            skipped=engine.skipped_updates,
        )

    def restore(self, engine: Any, method: Any) -> None:
        with torch.no_grad():
            for p, v in zip(all_params(engine), self.saved.params):
                p.copy_(v)
            for name, player in engine.players.items():
                player.optimizer.load_state_dict(copy.deepcopy(self.optimizers[name]))
            saved = dict(leaves(self.saved.state))
            for path, live in leaves(self.live_state):
                if isinstance(live, torch.Tensor):
                    live.copy_(saved[path])
            method.load_state_dict(self.live_state)  # the live tensors (identities kept) and the Python values
            for b, v in zip((b for m in _modules(engine, method) for b in m.buffers()), self.saved.buffers):
                b.copy_(v)
        set_generator_state(self.rng)
        engine.skipped_updates = self.skipped


def generator_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """torch's generator states (CPU, and CUDA once initialised): all a recording draws from.

    Not :func:`ppdgm.runtime.storage.rng_state`: Python's and NumPy's generators are not recorded, and converting
    NumPy's state goes through the host-side conversions a training step must not make.
    """
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []


def set_generator_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])


def _clone_tree(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, Mapping):
        return {k: _clone_tree(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_clone_tree(v) for v in tree)
    return copy.deepcopy(tree)


def all_params(engine: Any) -> list[torch.Tensor]:
    return list(dict.fromkeys(p for player in engine.players.values() for p in player.params))


def chained(err: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """``err`` or the first exception of type ``kind`` among its causes and contexts."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def param_labels(engine: Any) -> list[str]:
    """Names of :func:`all_params`, in its order (a method's own parameters by player and position)."""
    labels: dict[int, str] = {}
    for player in engine.players.values():
        extra = range(len(player.param_names), len(player.params))
        names = [*player.param_names, *(f"{player.name} #{i}" for i in extra)]
        for p, name in zip(player.params, names):
            labels.setdefault(id(p), repr(name))
    return [labels[id(p)] for p in all_params(engine)]


def batchable(a: Any, b: Any) -> bool:
    """Whether two values are floating-point tensors of one shape, dtype and device (compared by :func:`all_close`)."""
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.is_floating_point()
        and (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device)
    )


def all_close(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """Whether every pair (:func:`batchable`) agrees to the checks' tolerance, decided with one comparison per dtype
    and device rather than one per tensor."""
    groups: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for a, b in pairs:
        left, right = groups.setdefault((a.dtype, a.device), ([], []))
        left.append(a.detach().reshape(-1))
        right.append(b.detach().reshape(-1))
    for left, right in groups.values():
        a, b = torch.cat(left), torch.cat(right)
        # equal first: one pass, and on a CPU a recording usually agrees bit for bit
        if not (torch.equal(a, b) or bool(torch.isclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True).all())):
            return False
    return True


def first_difference(label: str, compiled: Any, eager: Any) -> str | None:
    """Where a recording's result differs from the eager step's, or ``None``."""
    if isinstance(compiled, torch.Tensor) and isinstance(eager, torch.Tensor):
        if compiled.shape != eager.shape or compiled.dtype != eager.dtype:
            return f"{label}: shape/dtype {tuple(compiled.shape)}/{compiled.dtype} against {tuple(eager.shape)}"
        if compiled.is_floating_point():
            same = torch.allclose(compiled.detach(), eager.detach(), rtol=RTOL, atol=ATOL, equal_nan=True)
        else:
            same = torch.equal(compiled, eager)
        if not same:
            gap = (compiled.detach().double() - eager.detach().double()).abs().max().item()
            return f"{label} differs (largest difference {gap:.3g})"
        return None
    if isinstance(compiled, torch.Tensor) or isinstance(eager, torch.Tensor) or compiled != eager:
        return f"{label} differs ({compiled!r} against {eager!r})"
    return None

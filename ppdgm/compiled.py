"""Compiled training steps: a method's step traced once per input shape into a flat graph of tensor operations.

Every run of a Pyro program costs handlers, distribution objects and trace bookkeeping, whatever the
size of the networks (~0.6 ms a program on a 2-core CPU). A step of a method is, underneath, a fixed
sequence of tensor operations: guide and model networks, random draws, log-densities, weights,
gradients, then each player's optimizer step. :class:`CompiledStep` records that sequence once with
torch's ``make_fx`` (in real mode: the recording run is a real step on real tensors), straight
through Pyro's handlers, and replays the recording on later steps without Python-level Pyro.

What a recording holds:

* the phases of the step: each phase's loss, its gradients over the moving players' parameters
  (``torch.autograd.grad``, recorded as explicit backward operations), then an opaque
  ``ppdgm::apply_update`` call that sets those gradients and steps the players' optimizers with the
  engine's own code (gradient averaging, skipping non-finite updates, the optimizer step itself) —
  so a later phase sees the parameters the earlier one moved, as in the eager step;
* the random draws, as random operations: every replay draws fresh noise from torch's generator,
  the same numbers the eager step would draw from the same generator state;
* the method's state (:meth:`Method.state_dict`: baselines, persistent chains, the generator's last
  metrics) as inputs and outputs, so running statistics carry over from step to step.

A recording is made per *key*: the shapes, dtypes and devices of the batch's columns and of the
method's state, :meth:`Method.compiled_key` (e.g. whether this step is a generator turn), autocast
and the caller's context (the global batch size of a data-parallel fit). A new key — the last,
partial batch of an epoch, another K — is traced once and cached.

**Safety.** The first time a recording is used it is checked: from the same parameters, optimizer
states, method state and generator state, the recording and the eager step are run and must give
the same metrics, parameters, method state and module buffers (``torch.allclose`` with
``rtol=1e-5, atol=1e-6``). A recording that fails to trace or disagrees — a host read (``.item()``,
``bool(tensor)``, an ``if`` on a tensor), an operation whose output shape depends on values
(``nonzero``, boolean masks), a parameter created mid-run, Python state the recording cannot
replay — is dropped: the fit goes on eagerly, with one :class:`CompileWarning` naming the cause
and the line of the program.

**Replay.** The traced graph is simplified (``detach`` dropped, negations moved onto the smaller
tensor, work on constants done once) and turned into one straight-line Python function calling
each operator's C++ entry point. On a GPU the whole step is then captured as a CUDA graph
(:class:`_CapturedStep`). :class:`RecordedFunction` applies the same recording, check and capture
to gradient-free functions (the chunks of an importance-sampled log-likelihood).
"""

from __future__ import annotations

import collections
import copy
import itertools
import traceback
import warnings
import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pyro
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode

from ppdgm.batch import Batch, Data
from ppdgm.errors import UsageError
from ppdgm.handlers import unconstrained_params

#: tolerance of the first-use check of a recording against the eager step
RTOL, ATOL = 1e-5, 1e-6
#: recordings kept per compiled step (least recently used dropped first)
MAX_RECORDINGS = 16
#: steps between re-checks of a recording against the eager step, once its early re-checks are done
RECHECK_EVERY = 600
COMPILE_MODES = ("auto", True, False)


def check_compile_mode(value: Any) -> None:
    """Refuse anything but ``"auto"``, ``True`` or ``False`` (``1`` equals ``True`` but is not a mode)."""
    if value not in COMPILE_MODES or not isinstance(value, bool | str):
        raise UsageError(f"compile must be 'auto', True or False, got {value!r}")


class CompileWarning(UserWarning):
    """A step could not be compiled (or its recording disagreed with the eager step): it runs eagerly."""


class CompileError(UsageError):
    """``compile=True`` and a step could not be compiled."""


class _Uncompilable(Exception):
    """Why a step cannot be recorded, with the program line responsible where known."""


# ---------------------------------------------------------------------------------------------- updates
_UPDATES: weakref.WeakValueDictionary[int, _Update] = weakref.WeakValueDictionary()
_TOKENS = itertools.count()


class _Update:
    """One phase's update, callable from a recording: set the gradients, then the engine's own step."""

    def __init__(self, engine: Any, moving: list[Any], params: list[torch.Tensor]) -> None:
        self.engine, self.moving, self.params = engine, moving, params
        self.token = next(_TOKENS)
        _UPDATES[self.token] = self

    def __call__(self, loss: torch.Tensor, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        for player in self.moving:
            player.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g
        self.engine.apply_gradients(loss, self.moving, self.params)


@torch.library.custom_op("ppdgm::apply_update", mutates_args=("params",))
def _apply_update(token: int, loss: torch.Tensor, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """Step the optimizers of one phase's players with ``grads`` (opaque to tracing: replayed as a call)."""
    _apply_update_now(token, loss, params, grads)


def _apply_update_now(token: int, loss: torch.Tensor, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    _UPDATES[token](loss, params, grads)


class _RecordingUpdates:
    """The engine's ``update`` while tracing: gradients as recorded operations, the step as one opaque call."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.updates: dict[tuple[str, ...], _Update] = {}

    def __call__(self, loss: torch.Tensor, moving: list[Any], params: list[torch.Tensor]) -> None:
        names = tuple(player.name for player in moving)
        update = self.updates.get(names)
        if update is None:
            update = self.updates[names] = _Update(self.engine, moving, params)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        used = [(p, g) for p, g in zip(params, grads) if g is not None]
        with torch.no_grad():
            torch.ops.ppdgm.apply_update(update.token, loss.detach(), [p for p, _ in used], [g for _, g in used])


# ---------------------------------------------------------------------------------------------- host reads
_HOST_READS = {
    torch.ops.aten._local_scalar_dense.default: "reads a tensor on the host (.item(), float(), bool() or an `if`)",
    torch.ops.aten.is_nonzero.default: "branches on a tensor's value (`if tensor:`)",
    torch.ops.aten.equal.default: "compares tensors on the host (torch.equal)",
    torch.ops.aten.nonzero.default: "makes a shape from values (nonzero)",
    torch.ops.aten.masked_select.default: "makes a shape from values (masked_select)",
}


class _RefuseHostReads(TorchDispatchMode):
    """Raise :class:`_Uncompilable` on operations whose result a recording would bake in."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        cause = _HOST_READS.get(func)
        if cause is None and func is torch.ops.aten.index.Tensor:
            if any(i is not None and i.dtype == torch.bool for i in args[1]):
                cause = "indexes with a boolean mask (its shape depends on values)"
        if cause is not None:
            raise _Uncompilable(f"the step {cause}{_program_line()}")
        return func(*args, **kwargs)


_LIBRARY_DIRS = tuple(str(Path(m.__file__).parent) for m in (torch, pyro))
_THIS_FILE = str(Path(__file__))


def _program_line(frames: list[traceback.FrameSummary] | None = None) -> str:
    """``at FILE:LINE (code)`` of the innermost frame outside torch, Pyro and this module."""
    for frame in reversed(frames if frames is not None else traceback.extract_stack()):
        if frame.filename.startswith(_LIBRARY_DIRS) or frame.filename == _THIS_FILE:
            continue
        return f" at {frame.filename}:{frame.lineno} ({(frame.line or '').strip()})"
    return ""


# ---------------------------------------------------------------------------------------------- state
def _leaves(tree: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """``(path, leaf)`` of a nested dict/list/tuple (a method's state dict)."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from _leaves(value, (*path, i))
    else:
        yield path, tree


def _replace(tree: Any, values: Mapping[tuple, Any], path: tuple = ()) -> Any:
    if path in values:
        return values[path]
    if isinstance(tree, Mapping):
        return {k: _replace(v, values, (*path, k)) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_replace(v, values, (*path, i)) for i, v in enumerate(tree))
    return tree


def _signature(value: Any) -> Hashable:
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
        return tuple((key, _signature(column)) for key, column in x.items())
    return _signature(x)


def _modules(engine: Any, method: Any) -> list[torch.nn.Module]:
    programs = engine.programs
    candidates = [programs.model, programs.guide, *method.modules()]
    return [m for m in candidates if isinstance(m, torch.nn.Module)]


@dataclass
class _Snapshot:
    """Everything a step changes, to run a step twice from the same point."""

    params: list[torch.Tensor]
    optimizers: dict[str, dict]
    live_state: dict
    saved_state: dict
    buffers: list[torch.Tensor]
    rng: tuple[torch.Tensor, list[torch.Tensor]]
    skipped: int = 0

    @classmethod
    def take(cls, engine: Any, method: Any) -> _Snapshot:
        live = method.state_dict()
        return cls(
            params=[p.detach().clone() for p in _all_params(engine)],
            optimizers={n: copy.deepcopy(p.optimizer.state_dict()) for n, p in engine.players.items()},
            live_state=live,
            saved_state=_clone_tree(live),
            buffers=[b.detach().clone() for m in _modules(engine, method) for b in m.buffers()],
            rng=_rng_state(),
            skipped=engine.skipped_updates,
        )

    def restore(self, engine: Any, method: Any) -> None:
        with torch.no_grad():
            for p, v in zip(_all_params(engine), self.params):
                p.copy_(v)
            for name, player in engine.players.items():
                player.optimizer.load_state_dict(copy.deepcopy(self.optimizers[name]))
            saved = dict(_leaves(self.saved_state))
            for path, live in _leaves(self.live_state):
                if isinstance(live, torch.Tensor):
                    live.copy_(saved[path])
            method.load_state_dict(self.live_state)  # the live tensors (identities kept) and the Python values
            for b, v in zip((b for m in _modules(engine, method) for b in m.buffers()), self.buffers):
                b.copy_(v)
        _set_rng_state(self.rng)
        engine.skipped_updates = self.skipped


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """torch's generator states (CPU, and CUDA once initialised): all a recording draws from.

    Not :func:`ppdgm.checkpoints.rng_state`: Python's and NumPy's generators are not recorded, and converting
    NumPy's state goes through the host-side conversions a training step must not make.
    """
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
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


def _all_params(engine: Any) -> list[torch.Tensor]:
    return list(dict.fromkeys(p for player in engine.players.values() for p in player.params))


def _chained(err: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """``err`` or the first exception of type ``kind`` among its causes and contexts."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _param_labels(engine: Any) -> list[str]:
    """Names of :func:`_all_params`, in its order (a method's own parameters by player and position)."""
    labels: dict[int, str] = {}
    for player in engine.players.values():
        extra = range(len(player.param_names), len(player.params))
        names = [*player.param_names, *(f"{player.name} #{i}" for i in extra)]
        for p, name in zip(player.params, names):
            labels.setdefault(id(p), repr(name))
    return [labels[id(p)] for p in _all_params(engine)]


def _difference(label: str, compiled: Any, eager: Any) -> str | None:
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


# ---------------------------------------------------------------------------------------------- recordings
class _Recording:
    """A traced step: ``graph(params, batch tensors, method-state tensors) -> (metrics, method-state tensors)``."""

    def __init__(self, graph: torch.fx.GraphModule, params: list[torch.Tensor], state_paths: list[tuple]) -> None:
        self.graph, self.params, self.state_paths = graph, params, state_paths
        self.run = _straight_line(graph)
        self.updates: list[_Update] = []  # kept alive while the recording is

    def __call__(
        self, method: Any, x: Data, state: dict | None = None, extra: tuple[torch.Tensor, ...] = ()
    ) -> dict[str, torch.Tensor]:
        """One step from the recording; ``state``: the method's state dict, where the caller has read it already;
        ``extra``: the per-step arguments fed in as tensors (:meth:`CompiledStep._step_arguments`)."""
        state, inputs = self.state_inputs(method, state)
        with torch.no_grad():
            metrics, outputs = self.run(*self.params, *data_leaves(x), *extra, *inputs)
        self.write_back(method, state, inputs, outputs)
        return metrics

    def state_inputs(self, method: Any, state: dict | None = None) -> tuple[dict, list[torch.Tensor]]:
        """The method's state dict and the tensors of it the recording takes."""
        state = method.state_dict() if state is None else state
        live = dict(_leaves(state))
        return state, [live[path] for path in self.state_paths]

    def write_back(self, method: Any, state: dict, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        """Hand the method its state after the step, then its Python-side bookkeeping."""
        changed = {path: new for path, old, new in zip(self.state_paths, inputs, outputs) if new is not old}
        if changed:
            method.load_state_dict(_replace(state, changed))
        method.after_replay()


class _CapturedStep:
    """A checked recording captured as one CUDA graph: every phase, its backward and each optimizer step.

    Batch and method-state tensors are copied into static buffers before each replay; the optimizers
    are capturable (their step counters on the GPU). Creating one takes a real step (the warm-up,
    on a side stream, as CUDA graph capture requires) before capturing the next.
    """

    def __init__(self, recording: _Recording, x: Data, extra: tuple[torch.Tensor, ...] = ()) -> None:
        self.recording = recording
        self.static_x = [t.clone() for t in (*data_leaves(x), *extra)]
        self.static_state: list[torch.Tensor] = []
        self.graph = torch.cuda.CUDAGraph()
        self.metrics: dict[str, torch.Tensor] = {}
        self.outputs: list[torch.Tensor] = []

    def warm_up(self, method: Any) -> dict[str, torch.Tensor]:
        """A real step from the static buffers, on a side stream (before capture, as CUDA graphs require)."""
        state, inputs = self.recording.state_inputs(method)
        self.static_state = [t.clone() for t in inputs]
        metrics, outputs = _on_side_stream(self.recording.run, *self.inputs())
        self.recording.write_back(method, state, inputs, outputs)
        return {k: v.clone() for k, v in metrics.items()}

    def capture(self, pool: Any) -> None:
        self.metrics, self.outputs = _capture(self.graph, pool, self.recording.run, *self.inputs())

    def inputs(self) -> list[torch.Tensor]:
        """The recording's inputs: parameters, then the static batch and state buffers."""
        return [*self.recording.params, *self.static_x, *self.static_state]

    def __call__(
        self, method: Any, x: Data, state: dict, extra: tuple[torch.Tensor, ...] = ()
    ) -> dict[str, torch.Tensor]:
        for static, column in zip(self.static_x, (*data_leaves(x), *extra)):
            static.copy_(column, non_blocking=True)
        state, inputs = self.recording.state_inputs(method, state)
        for static, live in zip(self.static_state, inputs):
            if static is not live:
                static.copy_(live)
        self.graph.replay()
        self.recording.write_back(method, state, inputs, self.outputs)
        return {k: v.clone() for k, v in self.metrics.items()}  # the static outputs change with the next replay


def _on_side_stream(run: Callable[..., Any], *args: Any) -> Any:
    """``run(*args)`` without gradients on a side stream, ordered after and before the current stream's work (the
    warm-up CUDA graph capture requires)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        result = run(*args)
    torch.cuda.current_stream().wait_stream(stream)
    return result


def _capture(graph: torch.cuda.CUDAGraph, pool: Any, run: Callable[..., Any], *args: Any) -> Any:
    """``run(*args)`` captured into ``graph`` (memory from ``pool``); returns its outputs, rewritten by each replay."""
    with torch.no_grad(), torch.cuda.graph(graph, pool=pool):
        return run(*args)


def _make_capturable(engine: Any) -> str | None:
    """Switch the engine's optimizers to capturable (step counters on the GPU); why not, where they cannot be."""
    if engine.grad_sync is not None:
        return "a data-parallel step averages gradients between its phases"
    if engine.skip_nonfinite:
        return "skip_nonfinite reads the loss on the host in every phase"
    for player in engine.players.values():
        optimizer = player.optimizer
        if any(p.device.type != "cuda" for p in player.params):
            return f"the {player.name!r} player's parameters are not all on a CUDA device"
        for group in optimizer.param_groups:
            if "capturable" not in group and not isinstance(optimizer, torch.optim.SGD):
                return f"the {player.name!r} optimizer ({type(optimizer).__name__}) has no capturable mode"
    for player in engine.players.values():
        for group in player.optimizer.param_groups:
            if "capturable" in group:
                group["capturable"] = True
            for p in group["params"]:
                state = player.optimizer.state.get(p, {})
                if "step" in state:
                    state["step"] = torch.as_tensor(state["step"], dtype=torch.float32, device=p.device)
    return None


def _state_paths(state: Any, params: list[torch.Tensor]) -> list[tuple]:
    """Paths of the method-state tensors a recording carries (views of parameters are the parameters' business)."""
    param_storage = {p.untyped_storage().data_ptr() for p in params}
    return [
        path
        for path, leaf in _leaves(state)
        if isinstance(leaf, torch.Tensor) and leaf.untyped_storage().data_ptr() not in param_storage
    ]


_LIKE = {torch.ops.aten.ones_like.default, torch.ops.aten.zeros_like.default, torch.ops.aten.full_like.default}


def _pure(target: Any) -> bool:
    """An aten operation whose result depends on its arguments alone: no random draw, no mutation, no empty memory."""
    if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten":
        return False
    return (
        torch.Tag.nondeterministic_seeded not in target.tags
        and not target._schema.is_mutable
        and "empty" not in target._schema.name
    )


def _fold_constants(graph: torch.fx.GraphModule) -> None:
    """Compute once what depends on constants only (a prior's fixed scale, the seed gradient of a mean...).

    A folded value feeds only other pure operations, never a mutation, the optimizer call or the output, so no
    replay can change or hand out the shared constant.
    """
    values: dict[torch.fx.Node, Any] = {}
    for node in graph.graph.nodes:
        if node.op == "get_attr":
            values[node] = getattr(graph, node.target)
        elif node.op == "call_function" and _pure(node.target):
            if node.target in _LIKE and isinstance(node.args[0], torch.fx.Node) and "val" in node.args[0].meta:
                like = node.args[0].meta["val"]
                template = torch.empty(like.shape, dtype=like.dtype, device=like.device)
                args = (template, *node.args[1:])
            elif all(n in values for n in node.all_input_nodes):
                args = torch.fx.node.map_arg(node.args, lambda n: values[n])
            else:
                continue
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: values[n])
            with torch.no_grad():
                values[node] = node.target(*args, **kwargs)
    for node, value in values.items():
        if node.op != "call_function" or not isinstance(value, torch.Tensor):
            continue
        users = [u for u in node.users if u not in values]
        if not users or any(u.op != "call_function" or not _pure(u.target) for u in users):
            continue
        name = f"_folded_{node.name}"
        graph.register_buffer(name, value, persistent=False)
        with graph.graph.inserting_before(node):
            constant = graph.graph.get_attr(name)
        for user in users:
            user.replace_input_with(node, constant)


_VIEWS = {
    torch.ops.aten.view.default,
    torch.ops.aten.expand.default,
    torch.ops.aten.unsqueeze.default,
    torch.ops.aten.squeeze.dim,
    torch.ops.aten.squeeze.dims,
    torch.ops.aten._unsafe_view.default,
    torch.ops.aten.alias.default,
}


def _view_chain(node: Any, single_use: bool) -> tuple[list[torch.fx.Node], Any]:
    """The view operations (outermost first) between ``node`` and the value they view, and that value."""
    chain: list[torch.fx.Node] = []
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in _VIEWS:
        if single_use and len(node.users) != 1:
            break
        chain.append(node)
        node = node.args[0]
    return chain, node


def _numel(node: Any) -> int | None:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return value.numel() if isinstance(value, torch.Tensor) else None


def _replay_views(graph: torch.fx.Graph, source: Any, chain: list[torch.fx.Node]) -> torch.fx.Node:
    for view in reversed(chain):
        source = graph.call_function(cast(Callable[..., Any], view.target), (source, *view.args[1:]), view.kwargs)
    return source


def _move_negations(graph: torch.fx.GraphModule) -> None:
    """Negate the smaller tensor: ``sum(neg(x))`` becomes ``neg(sum(x))`` and ``neg(expand(v))`` ``expand(neg(v))``.

    Pyro's Bernoulli log-density negates a whole (K, B, D) tensor before its sum, and the backward negates the
    expanded gradient; both are a full pass over the largest tensors of a step at large K. Negation is exact,
    so the values are unchanged.
    """
    aten = torch.ops.aten
    for node in list(graph.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.sum.dim_IntList:
            chain, neg = _view_chain(node.args[0], single_use=True)
            if isinstance(neg, torch.fx.Node) and neg.target is aten.neg.default and len(neg.users) == 1:
                with graph.graph.inserting_before(node):
                    viewed = _replay_views(graph.graph, neg.args[0], chain)
                    summed = graph.graph.call_function(node.target, (viewed, *node.args[1:]), node.kwargs)
                    negated = graph.graph.call_function(aten.neg.default, (summed,))
                node.replace_all_uses_with(negated)
        elif node.target is aten.neg.default:
            chain, source = _view_chain(node.args[0], single_use=False)
            small, large = _numel(source), _numel(node)
            if chain and small is not None and large is not None and small < large:
                with graph.graph.inserting_before(node):
                    negated = graph.graph.call_function(aten.neg.default, (source,))
                    viewed = _replay_views(graph.graph, negated, chain)
                node.replace_all_uses_with(viewed)
    graph.graph.eliminate_dead_code()


def _simplify(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Drop what a replay without autograd does not need: ``detach``, transposes of transposes, work on constants."""
    aten = torch.ops.aten
    for node in list(graph.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.detach.default:
            node.replace_all_uses_with(node.args[0])
        elif node.target is aten.t.default:
            source = node.args[0]
            if isinstance(source, torch.fx.Node) and source.target is aten.t.default:
                node.replace_all_uses_with(source.args[0])
    graph.graph.eliminate_dead_code()
    _move_negations(graph)
    _fold_constants(graph)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def _straight_line(graph: torch.fx.GraphModule) -> Callable[..., Any]:
    """The recording as one Python function calling each operator's C++ entry point directly.

    FX's own code calls ``torch.ops.aten.<op>.<overload>(...)``, a Python-level wrapper per operation; a
    recording has a few hundred of them, and the wrappers are a measurable part of a small step on a CPU. This
    generates the same straight-line code against the operators' bound entry points, releasing each value after
    its last use as FX's code does.
    """
    names: dict[torch.fx.Node, str] = {}
    scope: dict[str, Any] = {}
    lines: list[str] = []
    params: list[str] = []
    last_use: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in graph.graph.nodes:
        for used in node.all_input_nodes:
            last_use[used] = node

    def constant(value: Any) -> str:
        name = f"_c{len(scope)}"
        scope[name] = value
        return name

    def arg(value: Any) -> str:
        if isinstance(value, torch.fx.Node):
            return names[value]
        if isinstance(value, list | tuple):
            inner = ", ".join(arg(v) for v in value)
            return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k!r}: {arg(v)}" for k, v in value.items()) + "}"
        if value is None or isinstance(value, bool | int | str) or type(value) is float and value == value:
            return repr(value) if not isinstance(value, float) or abs(value) != float("inf") else constant(value)
        return constant(value)

    for i, node in enumerate(graph.graph.nodes):
        names[node] = f"v{i}"
        if node.op == "placeholder":
            params.append(names[node])
        elif node.op == "get_attr":
            lines.append(f"{names[node]} = {constant(getattr(graph, node.target))}")
        elif node.op == "call_function":
            target = node.target
            if target is torch.ops.ppdgm.apply_update.default:
                target = _apply_update_now  # no dispatcher round trip (~65 µs a phase on a CPU) for a Python function
            elif isinstance(target, torch._ops.OpOverload):
                target = target._op
            call_args = ", ".join([arg(a) for a in node.args] + [f"{k}={arg(v)}" for k, v in node.kwargs.items()])
            lines.append(f"{names[node]} = {constant(target)}({call_args})")
        elif node.op == "output":
            lines.append(f"return {arg(node.args[0])}")
            continue
        else:  # make_fx records operators only
            raise _Uncompilable(f"the recording holds a {node.op} node")
        dead = [names[n] for n, last in last_use.items() if last is node and n.op != "placeholder"]
        if dead:
            lines.append(f"del {', '.join(dead)}")
    source = f"def step({', '.join(params)}):\n" + "\n".join(f"    {line}" for line in lines) + "\n"
    exec(compile(source, "<ppdgm recording>", "exec"), scope)  # noqa: S102  (code generated from the graph above)
    return scope["step"]


# ---------------------------------------------------------------------------------------------- the step
class CompiledStep:
    """A method's training step, run from recordings where possible (module docstring).

    Args:
        method, engine: the method and the engine that owns its players.
        compile: ``"auto"`` (recordings, falling back to the eager step with a :class:`CompileWarning`),
            ``True`` (raise :class:`CompileError` when a step cannot be compiled) or ``False`` (eager).
        eager_steps: steps run eagerly before the first recording (lazily created state: optimizer
            moments, baselines, a generator's first metrics).
        start_step: steps the run had taken before this fit (a resumed fit).
        validate_all: every step eager, with Pyro's argument checks.
        recheck_every: steps between re-checks of the recordings against the eager step (see :meth:`due`).
    """

    def __init__(
        self,
        method: Any,
        engine: Any,
        compile: bool | str = "auto",
        eager_steps: int = 1,
        cuda_graphs: bool = True,
        recheck_every: int = RECHECK_EVERY,
        start_step: int = 0,
        validate_all: bool = False,
    ) -> None:
        check_compile_mode(compile)
        self.method, self.engine, self.mode = method, engine, compile
        self.eager_steps = eager_steps
        #: steps the fit had taken before this one started (a resumed fit): the first ``eager_steps`` of the *run*
        #: are eager, so that a resumed fit takes each step on the path an uninterrupted one takes
        self.start_step = start_step
        #: every step eager, with Pyro's argument checks (``fit(validate=True)``); otherwise a step under checks is
        #: checked by the eager half of its recording's first-use check
        self.validate_all = validate_all
        self.recheck_every = recheck_every
        #: replays of each recording since it was made (re-checked on its first replay, see :meth:`due`)
        self.uses: dict[Hashable, int] = {}
        self.rechecks = 0
        self.since_check = 0
        #: set by the training loop before an epoch's first step: re-check then if one is due soon
        self.epoch_start = False
        self.recordings: collections.OrderedDict[Hashable, _Recording] = collections.OrderedDict()
        self.fallback: str | None = None if method.compilable is True else method.compilable
        self.steps = 0
        self.compiled_steps = 0
        self.traces = 0
        #: captured CUDA graphs by recording key and learning rates (None: not on a GPU, or why not)
        self.cuda_graphs: str | None = None if cuda_graphs else "switched off"
        self.captured: collections.OrderedDict[Hashable, _CapturedStep] = collections.OrderedDict()
        self.captured_steps = 0
        self._pool: Any = None

    @property
    def path(self) -> str:
        """``"compiled"`` when the last steps ran from recordings, else ``"eager"``."""
        if self.mode is False or self.fallback is not None or not self.compiled_steps:
            return "eager"
        return "cuda-graph" if self.captured_steps else "compiled"

    def describe(self) -> dict[str, Any]:
        """What ran, for run records."""
        return {
            "path": self.path,
            "compile": self.mode,
            "compiled_steps": self.compiled_steps,
            "eager_steps": self.steps - self.compiled_steps,
            "traces": self.traces,
            "fallback": self.fallback,
            "cuda_graph_steps": self.captured_steps,
            "cuda_graphs_off": self.cuda_graphs,
            "rechecks": self.rechecks,
        }

    def __call__(self, x: Data, context: Hashable = ()) -> dict[str, torch.Tensor]:
        """One step on ``x``; ``context``: what else the step's operations depend on (part of the key)."""
        self.steps += 1
        eager_now = self.start_step + self.steps <= self.eager_steps or self.validate_all
        if self.mode is False or self.fallback is not None or eager_now:
            if self.mode is True and self.fallback is not None:
                raise CompileError(f"method {self.method.name!r} cannot be compiled: {self.fallback}")
            return self.method.step(self.engine, x)
        state = self.method.state_dict()  # read once a step: the key and the recording's inputs
        fed, others = self._step_arguments()
        extra = self._extra(fed, x)
        key = self._key(x, context, state, (tuple((k, _hashable(v)) for k, v in zip(fed, extra)), others))
        recording = self.recordings.get(key)
        if recording is None:
            return self._first_use(key, x, fed, extra)
        self.recordings.move_to_end(key)
        uses = self.uses[key] = self.uses.get(key, 0) + 1
        self.since_check += 1
        if self.due(uses):
            return self._recheck(recording, x, extra)
        self.compiled_steps += 1
        if self.cuda_graphs is None and self._on_gpu():
            return self._captured(key, recording, x, state, extra)
        return recording(self.method, x, state, extra)

    def due(self, uses: int) -> bool:
        """Whether this replay re-checks its recording against the eager step: on the recording's first replay, then
        every ``recheck_every`` steps, and at an epoch's first step once half of that has passed. What a recording
        cannot see — Python state a program reads (a global schedule, a call counter), a parameter created late — is
        caught there, at a cost bounded by the schedule (docs/performance.md, 'Re-checks')."""
        epoch_start, self.epoch_start = self.epoch_start, False
        if uses == 1:
            return True
        return self.since_check >= self.recheck_every or (epoch_start and 2 * self.since_check >= self.recheck_every)

    def _step_arguments(self) -> tuple[dict[str, Any], tuple]:
        """The programs' per-step keyword arguments (``fit(step_kwargs=...)``): floats and tensors, fed to recordings
        as tensor inputs, and the other values (ints, flags, names), part of the key (a new value, a new recording)."""
        given = self.engine.programs.step_kwargs
        if not given:
            return {}, ()
        fed = {k: v for k, v in given.items() if isinstance(v, float | torch.Tensor)}
        others = tuple((k, _hashable(v)) for k, v in given.items() if k not in fed)
        return fed, others

    @staticmethod
    def _extra(fed: dict[str, Any], x: Data) -> tuple[torch.Tensor, ...]:
        if not fed:
            return ()
        device = data_leaves(x)[0].device
        return tuple(
            v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.float64, device=device)
            for v in fed.values()
        )

    def _on_gpu(self) -> bool:
        if self._pool is None:
            reason = _make_capturable(self.engine) if torch.cuda.is_available() else "no CUDA device"
            if reason is not None:
                self.cuda_graphs = reason
                return False
            self._pool = torch.cuda.graph_pool_handle()
        return True

    def _captured(
        self, key: Hashable, recording: _Recording, x: Data, state: dict, extra: tuple[torch.Tensor, ...]
    ) -> dict[str, torch.Tensor]:
        """The step from its CUDA graph, captured on first use per key and learning rates (baked into the kernels)."""
        rates = tuple(group["lr"] for player in self.engine.players.values() for group in player.optimizer.param_groups)
        captured = self.captured.get((key, rates))
        if captured is not None:
            self.captured.move_to_end((key, rates))
            self.captured_steps += 1
            return captured(self.method, x, state, extra)
        captured = _CapturedStep(recording, x, extra)
        metrics = captured.warm_up(self.method)  # this step's update
        try:
            captured.capture(self._pool)
        except Exception as err:  # the step has run: replay recordings without CUDA graphs from now on
            self.cuda_graphs = f"capture failed with {type(err).__name__}: {err}"
            warnings.warn(f"ppdgm steps without CUDA graphs: {self.cuda_graphs}", CompileWarning, stacklevel=3)
            return metrics
        self.captured[(key, rates)] = captured
        if len(self.captured) > MAX_RECORDINGS:
            self.captured.popitem(last=False)
        return metrics

    def _key(self, x: Data, context: Hashable, state: dict, arguments: Hashable = ()) -> Hashable:
        signature = tuple((path, _signature(leaf)) for path, leaf in _leaves(state))
        autocast = tuple(
            (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)) for device in ("cpu", "cuda")
        )
        method = (repr(self.method.options()), self.method.compiled_key())  # another K is another recording
        params = self.engine.param_version  # parameters adopted since: another recording
        return (method, data_signature(x), signature, autocast, torch.is_grad_enabled(), context, arguments, params)

    def _first_use(
        self, key: Hashable, x: Data, fed: dict[str, Any], extra: tuple[torch.Tensor, ...]
    ) -> dict[str, torch.Tensor]:
        """Trace, check against the eager step, and take one real step on the path that passed."""
        engine = self.engine
        sync, engine.grad_sync = engine.grad_sync, None  # the traced step stays local to each rank
        start = _Snapshot.take(engine, self.method)
        try:
            recording = self._trace(x, fed, extra)
            start.restore(engine, self.method)
        except _Uncompilable as cause:
            start.restore(engine, self.method)
            engine.grad_sync = sync
            self._give_up(str(cause))
            return self.method.step(engine, x)
        finally:
            engine.grad_sync = sync
        self.recordings[key] = recording
        if len(self.recordings) > MAX_RECORDINGS:
            self.uses.pop(self.recordings.popitem(last=False)[0], None)
        self.uses[key] = 0
        return self._recheck(recording, x, extra)

    def _recheck(self, recording: _Recording, x: Data, extra: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """Run the recording and the eager step from the same point and compare them; the recording's step is then
        the real one, so which steps a check falls on does not change the result (a resumed fit, whose checks fall
        elsewhere, continues bit for bit). In a data-parallel fit, whose checks run locally, the recording takes the
        real step again from the same point, with its gradients averaged over the ranks."""
        engine, method = self.engine, self.method
        self.since_check = 0
        self.rechecks += 1
        self.captured.clear()  # restoring optimizer states below gives them new tensors, which captures point at
        sync, engine.grad_sync = engine.grad_sync, None  # the check's steps stay local to each rank
        start = _Snapshot.take(engine, method)
        owned = {n for player in engine.players.values() for n in player.param_names}
        version = engine.param_version
        try:
            compiled = _first_run(recording, method, x, None, extra)
            after_compiled = _Snapshot.take(engine, method)
            start.restore(engine, method)
            eager = method.step(engine, x)
            if engine.param_version != version:  # the eager step created parameters: it was this step's real one
                created = {n for player in engine.players.values() for n in player.param_names} - owned
                self._give_up(
                    f"the step created parameter(s) {sorted(created)} after the first step (the recording cannot "
                    "create them)"
                )
                return eager
            after_eager = _Snapshot.take(engine, method)
            self._compare(compiled, after_compiled, eager, after_eager)
        except _Uncompilable as cause:
            start.restore(engine, method)
            engine.grad_sync = sync
            self._give_up(str(cause))
            return method.step(engine, x)
        finally:
            engine.grad_sync = sync
        self.compiled_steps += 1
        if sync is None:
            after_compiled.restore(engine, method)
            return compiled
        start.restore(engine, method)
        return recording(method, x, None, extra)

    def _trace(self, x: Data, fed: dict[str, Any], extra: tuple[torch.Tensor, ...]) -> _Recording:
        engine, method = self.engine, self.method
        params = _all_params(engine)
        state = method.state_dict()
        state_paths = _state_paths(state, params)
        live = dict(_leaves(state))
        state_inputs = [live[path] for path in state_paths]
        known = set(unconstrained_params())
        engine.programs.unowned.clear()
        recorder = _RecordingUpdates(engine)

        def step() -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
            metrics = method.step(engine, x)
            after = dict(_leaves(method.state_dict()))
            return metrics, [after[path] for path in state_paths]

        engine.recorder = recorder
        programs = engine.programs
        given = programs.step_kwargs
        programs.step_kwargs = {**given, **dict(zip(fed, extra))}  # the recording reads them as its inputs
        self.traces += 1
        try:
            graph = _record(step, [*params, *data_leaves(x), *extra, *state_inputs])
        finally:
            engine.recorder = None
            programs.step_kwargs = given
        created = sorted((set(unconstrained_params()) - known) | set(engine.programs.unowned))
        if created:
            raise _Uncompilable(f"the step created parameter(s) {created} after the first step")
        after = method.state_dict()
        if [p for p, _ in _leaves(after)] != [p for p, _ in _leaves(state)]:
            raise _Uncompilable("the method's state changed its structure during the step")
        recording = _Recording(graph, params, state_paths)
        recording.updates = list(recorder.updates.values())
        return recording

    def _compare(self, compiled: dict, after_compiled: _Snapshot, eager: dict, after_eager: _Snapshot) -> None:
        checks: list[tuple[str, Any, Any]] = []
        if sorted(compiled) != sorted(eager):
            raise _Uncompilable(f"the recording returns metrics {sorted(compiled)}, the eager step {sorted(eager)}")
        checks += [(f"metric {k!r}", compiled[k], eager[k]) for k in eager]
        labels = _param_labels(self.engine)
        params = zip(labels, after_compiled.params, after_eager.params)
        checks += [(f"parameter {label}", a, b) for label, a, b in params]
        eager_state = dict(_leaves(after_eager.saved_state))
        checks += [
            (f"method state {'/'.join(map(str, path))}", value, eager_state.get(path))
            for path, value in _leaves(after_compiled.saved_state)
        ]
        buffers = zip(after_compiled.buffers, after_eager.buffers)
        checks += [(f"module buffer #{i}", a, b) for i, (a, b) in enumerate(buffers)]
        for label, a, b in checks:
            difference = _difference(label, a, b)
            if difference is not None:
                raise _Uncompilable(
                    f"the recorded step disagrees with the eager step: {difference} (Python-side effects or state "
                    "the recording cannot replay)"
                )

    def _give_up(self, cause: str) -> None:
        self.fallback = cause
        self.recordings.clear()
        if self.mode is True:
            raise CompileError(f"method {self.method.name!r} cannot be compiled: {cause}")
        warnings.warn(
            f"ppdgm runs the {self.method.name!r} step eagerly (compile='auto'): {cause}. See docs/performance.md, "
            "'Compiled steps', for what a program must avoid to be compiled.",
            CompileWarning,
            stacklevel=3,
        )


class RecordedFunction:
    """A function of tensors without gradients (an evaluator's chunk), recorded once per input signature and replayed.

    ``fn(*args)``: tensors and :class:`~ppdgm.batch.Batch` arguments are the recording's inputs; any other argument
    (a number of particles) is part of the key. The first call per key traces ``fn``, then runs the recording and
    ``fn`` from the same generator state; they must agree (``RTOL``/``ATOL``), or ``fn`` runs eagerly from then on
    with one :class:`CompileWarning`. On a GPU each recording is captured as a CUDA graph with static inputs.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], label: str, enabled: bool = True) -> None:
        self.fn, self.label = fn, label
        self.fallback: str | None = None if enabled else "switched off"
        self.entries: dict[Hashable, Callable[[list[torch.Tensor]], torch.Tensor]] = {}
        self._pool: Any = None

    def __call__(self, *args: Any) -> torch.Tensor:
        if self.fallback is not None:
            return self.fn(*args)
        leaves = [t for a in args if isinstance(a, torch.Tensor | Batch) for t in data_leaves(a)]
        key = tuple(data_signature(a) if isinstance(a, torch.Tensor | Batch) else a for a in args)
        entry = self.entries.get(key)
        if entry is not None:
            return entry(leaves)
        try:
            entry, value = self._first_use(args, leaves)
        except _Uncompilable as cause:
            self.fallback = str(cause)
            warnings.warn(f"ppdgm runs {self.label} eagerly: {cause}", CompileWarning, stacklevel=2)
            return self.fn(*args)
        self.entries[key] = entry
        return value

    def _first_use(self, args: tuple, leaves: list[torch.Tensor]) -> tuple[Callable, torch.Tensor]:
        rng = _rng_state()
        with torch.no_grad():
            graph = _straight_line(_record(lambda: self.fn(*args), leaves))
        _set_rng_state(rng)
        with torch.no_grad():
            recorded = _first_run(graph, *leaves)
        _set_rng_state(rng)
        eager = self.fn(*args)
        difference = _difference("the result", recorded, eager)
        if difference is not None:
            raise _Uncompilable(f"the recording disagrees with the eager call: {difference}")
        if leaves and leaves[0].device.type == "cuda" and torch.cuda.is_available():
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            return _captured_function(graph, leaves, self._pool), eager

        def replay(inputs: list[torch.Tensor]) -> torch.Tensor:
            with torch.no_grad():
                return graph(*inputs)

        return replay, eager


def _captured_function(
    graph: Callable[..., torch.Tensor], leaves: list[torch.Tensor], pool: Any
) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """A recording captured as a CUDA graph over static copies of its inputs."""
    static = [t.clone() for t in leaves]
    _on_side_stream(graph, *static)  # warm-up, as capture requires
    cuda_graph = torch.cuda.CUDAGraph()
    output = _capture(cuda_graph, pool, graph, *static)

    def replay(inputs: list[torch.Tensor]) -> torch.Tensor:
        for buffer, value in zip(static, inputs):
            buffer.copy_(value, non_blocking=True)
        cuda_graph.replay()
        return output.clone()

    return replay


def _record(fn: Callable[[], Any], inputs: list[torch.Tensor]) -> torch.fx.GraphModule:
    """``fn()`` traced by ``make_fx`` in real mode over ``inputs`` (tracked by identity wherever ``fn`` uses them),
    host reads refused and argument checks off, then simplified; any failure an :class:`_Uncompilable`."""

    def traced(*_inputs: torch.Tensor) -> Any:
        with _RefuseHostReads():
            return fn()

    try:
        with _no_argument_checks():
            graph = make_fx(traced)(*inputs)
    except Exception as err:
        cause = _chained(err, _Uncompilable)
        if cause is not None:  # refused by _RefuseHostReads, possibly wrapped in a ProgramError on the way out
            raise cause from None
        where = _program_line(traceback.extract_tb(err.__traceback__))
        raise _Uncompilable(f"tracing failed with {type(err).__name__}: {err}{where}") from err
    return _simplify(graph)


def _first_run(run: Callable[..., Any], *args: Any) -> Any:
    """A recording's first run, any failure of it a reason to stay eager."""
    try:
        return run(*args)
    except Exception as err:
        raise _Uncompilable(f"the recording failed to run: {type(err).__name__}: {err}") from err


class _no_argument_checks:
    """Pyro's and torch.distributions' argument checks off while tracing: their support checks read tensors on the host.

    Also, ``OneHotCategorical.sample`` makes its rows with ``scatter`` instead of ``F.one_hot``, which checks the
    class indices on the host; the rows (and the random draws) are the same.
    """

    def __enter__(self) -> None:
        self._pyro = pyro.validation_enabled(False)
        self._pyro.__enter__()
        self._torch = torch.distributions.Distribution._validate_args
        torch.distributions.Distribution.set_default_validate_args(False)
        self._sample = torch.distributions.OneHotCategorical.sample
        torch.distributions.OneHotCategorical.sample = _one_hot_sample  # type: ignore[method-assign]
        # distributions built while validation was on (a PyroSample prior) keep their own flag
        self._validate_sample = torch.distributions.Distribution._validate_sample
        torch.distributions.Distribution._validate_sample = _no_check  # type: ignore[method-assign]

    def __exit__(self, *exc: Any) -> None:
        torch.distributions.Distribution._validate_sample = self._validate_sample  # type: ignore[method-assign]
        torch.distributions.OneHotCategorical.sample = self._sample  # type: ignore[method-assign]
        torch.distributions.Distribution.set_default_validate_args(self._torch)
        self._pyro.__exit__(*exc)


def _hashable(value: Any) -> Hashable:
    """A per-step argument as part of a recording's key (a tensor by its signature: its values are not keyed)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", _signature(value))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _no_check(self: Any, value: torch.Tensor) -> None:
    del self, value


def _one_hot_sample(self: Any, sample_shape: Any = ()) -> torch.Tensor:
    probs = self._categorical.probs
    indices = self._categorical.sample(torch.Size(sample_shape))
    rows = torch.zeros((*indices.shape, self._categorical._num_events), dtype=probs.dtype, device=probs.device)
    return rows.scatter_(-1, indices.unsqueeze(-1), 1.0)

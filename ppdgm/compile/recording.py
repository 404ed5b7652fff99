"""Recordings: a step recorded (:mod:`~ppdgm.compile.tracer`), replayed, and captured as a CUDA graph."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Hashable
from typing import Any

import pyro
import torch

from ppdgm.compile.failures import Uncompilable
from ppdgm.compile.host_reads import program_line
from ppdgm.compile.passes import simplify, straight_line
from ppdgm.compile.state import chained, data_leaves, leaves, replace_leaves, signature_of
from ppdgm.compile.tracer import RecordedGraph, record_operations
from ppdgm.compile.updates import PhaseUpdate
from ppdgm.programs.batch import Data


# ---------------------------------------------------------------------------------------------- recordings
class Recording:
    """A traced step: ``graph(params, batch tensors, method-state tensors) -> (metrics, method-state tensors)``."""

    def __init__(self, graph: RecordedGraph, params: list[torch.Tensor], state_paths: list[tuple]) -> None:
        self.graph, self.params, self.state_paths = graph, params, state_paths
        self.run = straight_line(graph)
        self.updates: list[PhaseUpdate] = []  # kept alive while the recording is

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
        live = dict(leaves(state))
        return state, [live[path] for path in self.state_paths]

    def write_back(self, method: Any, state: dict, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        """Hand the method its state after the step, then its Python-side bookkeeping."""
        changed = {path: new for path, old, new in zip(self.state_paths, inputs, outputs) if new is not old}
        if changed:
            method.load_state_dict(replace_leaves(state, changed))
        method.after_replay()


class CapturedStep:
    """A checked recording captured as one CUDA graph: every phase, its backward and each optimizer step.

    Batch and method-state tensors are copied into static buffers before each replay; the optimizers
    are capturable (their step counters on the GPU). Creating one takes a real step (the warm-up,
    on a side stream, as CUDA graph capture requires) before capturing the next.
    """

    def __init__(self, recording: Recording, x: Data, extra: tuple[torch.Tensor, ...] = ()) -> None:
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
        metrics, outputs = on_side_stream(self.recording.run, *self.inputs())
        self.recording.write_back(method, state, inputs, outputs)
        return {k: v.clone() for k, v in metrics.items()}

    def capture(self, pool: Any) -> None:
        self.metrics, self.outputs = capture(self.graph, pool, self.recording.run, *self.inputs())

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


def on_side_stream(run: Callable[..., Any], *args: Any) -> Any:
    """``run(*args)`` without gradients on a side stream, ordered after and before the current stream's work (the
    warm-up CUDA graph capture requires)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        result = run(*args)
    torch.cuda.current_stream().wait_stream(stream)
    return result


def capture(graph: torch.cuda.CUDAGraph, pool: Any, run: Callable[..., Any], *args: Any) -> Any:
    """``run(*args)`` captured into ``graph`` (memory from ``pool``); returns its outputs, rewritten by each replay."""
    with torch.no_grad(), torch.cuda.graph(graph, pool=pool):
        return run(*args)


def make_capturable(engine: Any) -> str | None:
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


def param_state_paths(state: Any, params: list[torch.Tensor]) -> list[tuple]:
    """Paths of the method-state tensors a recording carries (views of parameters are the parameters' business)."""
    param_storage = {p.untyped_storage().data_ptr() for p in params}
    return [
        path
        for path, leaf in leaves(state)
        if isinstance(leaf, torch.Tensor) and leaf.untyped_storage().data_ptr() not in param_storage
    ]


def record_graph(fn: Callable[[], Any], inputs: list[torch.Tensor]) -> RecordedGraph:
    """``fn()`` run once and recorded over ``inputs`` (followed by identity wherever ``fn`` uses them), host reads
    refused and argument checks off, then simplified; any failure an :class:`Uncompilable`."""
    try:
        with _no_argument_checks():
            graph = record_operations(fn, inputs)
    except Exception as err:
        cause = chained(err, Uncompilable)
        if cause is not None:  # a refused host read, possibly wrapped in a ProgramError on the way out
            raise cause from None
        where = program_line(traceback.extract_tb(err.__traceback__))
        raise Uncompilable(f"tracing failed with {type(err).__name__}: {err}{where}") from err
    return simplify(graph)


def first_run(run: Callable[..., Any], *args: Any) -> Any:
    """A recording's first run, any failure of it a reason to stay eager."""
    try:
        return run(*args)
    except Exception as err:
        raise Uncompilable(f"the recording failed to run: {type(err).__name__}: {err}") from err


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


def hashable(value: Any) -> Hashable:
    """A per-step argument as part of a recording's key (a tensor by its signature: its values are not keyed)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", signature_of(value))
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

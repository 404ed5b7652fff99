"""Recorded gradient-free functions (the chunks of an importance-sampled log-likelihood)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from typing import Any

import torch

from ppdgm.compile.failures import CompileWarning, Uncompilable
from ppdgm.compile.passes import straight_line
from ppdgm.compile.recording import capture, first_run, on_side_stream, record_graph
from ppdgm.compile.state import data_leaves, data_signature, first_difference, generator_state, set_generator_state
from ppdgm.programs.batch import Batch


class RecordedFunction:
    """A function of tensors without gradients (an evaluator's chunk), recorded once per input signature and replayed.

    ``fn(*args)``: tensors and :class:`~ppdgm.programs.batch.Batch` arguments are the recording's inputs; any other
    argument (a number of particles) is part of the key. The first call per key traces ``fn``, then runs the recording
    and ``fn`` from the same generator state; they must agree (``RTOL``/``ATOL``), or ``fn`` runs eagerly from then on
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
        except Uncompilable as cause:
            self.fallback = str(cause)
            warnings.warn(f"ppdgm runs {self.label} eagerly: {cause}", CompileWarning, stacklevel=2)
            return self.fn(*args)
        self.entries[key] = entry
        return value

    def _first_use(self, args: tuple, leaves: list[torch.Tensor]) -> tuple[Callable, torch.Tensor]:
        rng = generator_state()
        with torch.no_grad():
            graph = straight_line(record_graph(lambda: self.fn(*args), leaves))
        set_generator_state(rng)
        with torch.no_grad():
            recorded = first_run(graph, *leaves)
        set_generator_state(rng)
        eager = self.fn(*args)
        difference = first_difference("the result", recorded, eager)
        if difference is not None:
            raise Uncompilable(f"the recording disagrees with the eager call: {difference}")
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
    on_side_stream(graph, *static)  # warm-up, as capture requires
    cuda_graph = torch.cuda.CUDAGraph()
    output = capture(cuda_graph, pool, graph, *static)

    def replay(inputs: list[torch.Tensor]) -> torch.Tensor:
        for buffer, value in zip(static, inputs):
            buffer.copy_(value, non_blocking=True)
        cuda_graph.replay()
        return output.clone()

    return replay

"""Recording a step's tensor operations: a dispatch mode that writes each operation it runs into an FX graph.

The step runs for real (real tensors, real kernels, the real random draws); below autograd, every aten operation
it dispatches — forward, the backward of ``torch.autograd.grad``, the opaque optimizer call — passes through
:class:`OperationRecorder`, which runs it and appends one node. Tensors are followed by identity: an input is a
placeholder, the result of a recorded operation its node, and any other tensor the step reads (a module buffer, a
constant built before the step) a constant of the graph, the same tensor object, so an in-place update of it (a
batch-norm running mean) reaches the live tensor on every replay.

This is what ``make_fx`` does in its real mode, without its per-operation cost (a fake-tensor copy of every
result, proxies, a torch-function mode): on a 2-core CPU it records a 190-operation vae step, simplified and
turned into code, in about 13 ms (three eager steps) where ``make_fx`` took about 95 ms (docs/performance.md, "A
small fixed cost").
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakTensorKeyDictionary

from ppdgm.compile.failures import Uncompilable
from ppdgm.compile.host_reads import host_read

_aten = torch.ops.aten


class TensorSpec(NamedTuple):
    """Shape, dtype and device of a recorded value (``node.meta["val"]``): what the graph passes read."""

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device

    def numel(self) -> int:
        return self.shape.numel()


class RecordedGraph(NamedTuple):
    """A recorded step: its FX graph (placeholders, operations, one output) and the constants its ``get_attr``
    nodes name. No ``GraphModule``: nothing runs the graph through FX's generated code
    (:func:`~ppdgm.compile.passes.straight_line` writes its own), so FX's code generation is not paid for."""

    graph: torch.fx.Graph
    constants: dict[str, Any]


class OperationRecorder(TorchDispatchMode):
    """Runs each dispatched operation and records it; refuses host reads (:mod:`ppdgm.compile.host_reads`)."""

    def __init__(self, inputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.graph = torch.fx.Graph()
        self.named: dict[str, Any] = {}
        self.nodes = WeakTensorKeyDictionary()
        self.constants = WeakTensorKeyDictionary()
        for i, tensor in enumerate(inputs):
            node = self.graph.placeholder(f"input_{i}")
            _describe(node, tensor)
            if tensor not in self.nodes:  # the same tensor given twice: its first placeholder
                self.nodes[tensor] = node

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        cause = host_read(func, args)
        if cause is not None:
            raise Uncompilable(cause)
        result = func(*args, **kwargs)
        target = _aten.lift_fresh_copy.default if func is _aten.lift_fresh.default else func
        node = self.graph.call_function(target, self._arguments(args), self._arguments(kwargs))
        self._track(node, result)
        return result

    def _arguments(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self.node_of(value)
        if isinstance(value, list | tuple):
            return type(value)(self._arguments(v) for v in value)
        if isinstance(value, dict):
            return {k: self._arguments(v) for k, v in value.items()}
        return value

    def node_of(self, tensor: torch.Tensor) -> torch.fx.Node:
        """The node a tensor came from, or a constant of the graph holding that tensor object."""
        node = self.nodes.get(tensor)
        if node is not None:
            return node
        node = self.constants.get(tensor)
        if node is None:
            name = f"_tensor_constant{len(self.constants)}"
            self.named[name] = tensor
            node = self.constants[tensor] = self.graph.get_attr(name)
            _describe(node, tensor)
        return node

    def _track(self, node: torch.fx.Node, result: Any) -> None:
        if isinstance(result, torch.Tensor):
            _describe(node, result)
            self.nodes[result] = node
        elif isinstance(result, list | tuple):
            for i, item in enumerate(result):
                if isinstance(item, torch.Tensor):
                    self._track(self.graph.call_function(operator.getitem, (node, i)), item)

    def finish(self, outputs: Any) -> RecordedGraph:
        """The graph returning ``outputs`` (nested dicts, lists and tuples of tensors and plain values)."""
        self.graph.output(self._arguments(outputs))
        return RecordedGraph(self.graph, self.named)


def _describe(node: torch.fx.Node, tensor: torch.Tensor) -> None:
    node.meta["val"] = TensorSpec(tensor.shape, tensor.dtype, tensor.device)


def record_operations(fn: Callable[[], Any], inputs: list[torch.Tensor]) -> RecordedGraph:
    """``fn()`` run once for real, its tensor operations recorded over ``inputs`` (followed by identity)."""
    recorder = OperationRecorder(inputs)
    with recorder:
        outputs = fn()
    return recorder.finish(outputs)

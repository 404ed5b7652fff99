"""Graph passes on a recording: constants folded, views and negations moved, straight-line code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch

from ppdgm.compile.failures import Uncompilable
from ppdgm.compile.tracer import RecordedGraph
from ppdgm.compile.updates import apply_update_now

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


def _fold_constants(recorded: RecordedGraph) -> None:
    """Compute once what depends on constants only (a prior's fixed scale, the seed gradient of a mean...).

    A folded value feeds only other pure operations, never a mutation, the optimizer call or the output, so no
    replay can change or hand out the shared constant.
    """
    graph = recorded.graph
    values: dict[torch.fx.Node, Any] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            values[node] = recorded.constants[node.target]
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
        recorded.constants[name] = value
        with graph.inserting_before(node):
            constant = graph.get_attr(name)
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
    return value.numel() if value is not None else None


def _replay_views(graph: torch.fx.Graph, source: Any, chain: list[torch.fx.Node]) -> torch.fx.Node:
    for view in reversed(chain):
        source = graph.call_function(cast(Callable[..., Any], view.target), (source, *view.args[1:]), view.kwargs)
    return source


def _move_negations(graph: torch.fx.Graph) -> None:
    """Negate the smaller tensor: ``sum(neg(x))`` becomes ``neg(sum(x))`` and ``neg(expand(v))`` ``expand(neg(v))``.

    Pyro's Bernoulli log-density negates a whole (K, B, D) tensor before its sum, and the backward negates the
    expanded gradient; both are a full pass over the largest tensors of a step at large K. Negation is exact,
    so the values are unchanged.
    """
    aten = torch.ops.aten
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.sum.dim_IntList:
            chain, neg = _view_chain(node.args[0], single_use=True)
            if isinstance(neg, torch.fx.Node) and neg.target is aten.neg.default and len(neg.users) == 1:
                with graph.inserting_before(node):
                    viewed = _replay_views(graph, neg.args[0], chain)
                    summed = graph.call_function(node.target, (viewed, *node.args[1:]), node.kwargs)
                    negated = graph.call_function(aten.neg.default, (summed,))
                node.replace_all_uses_with(negated)
        elif node.target is aten.neg.default:
            chain, source = _view_chain(node.args[0], single_use=False)
            small, large = _numel(source), _numel(node)
            if chain and small is not None and large is not None and small < large:
                with graph.inserting_before(node):
                    negated = graph.call_function(aten.neg.default, (source,))
                    viewed = _replay_views(graph, negated, chain)
                node.replace_all_uses_with(viewed)


def simplify(recorded: RecordedGraph) -> RecordedGraph:
    """Drop what a replay without autograd does not need: ``detach``, transposes of transposes, work on constants."""
    aten = torch.ops.aten
    graph = recorded.graph
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.detach.default:
            node.replace_all_uses_with(node.args[0])
        elif node.target is aten.t.default:
            source = node.args[0]
            if isinstance(source, torch.fx.Node) and source.target is aten.t.default:
                node.replace_all_uses_with(source.args[0])
    _move_negations(graph)
    graph.eliminate_dead_code()
    _fold_constants(recorded)
    graph.eliminate_dead_code()
    return recorded


def straight_line(recorded: RecordedGraph) -> Callable[..., Any]:
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
    graph = recorded.graph
    last_use: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in graph.nodes:
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

    for i, node in enumerate(graph.nodes):
        names[node] = f"v{i}"
        if node.op == "placeholder":
            params.append(names[node])
        elif node.op == "get_attr":
            lines.append(f"{names[node]} = {constant(recorded.constants[node.target])}")
        elif node.op == "call_function":
            target = node.target
            if target is torch.ops.ppdgm.apply_update.default:
                target = apply_update_now  # no dispatcher round trip (~65 µs a phase on a CPU) for a Python function
            elif isinstance(target, torch._ops.OpOverload):
                target = target._op
            call_args = ", ".join([arg(a) for a in node.args] + [f"{k}={arg(v)}" for k, v in node.kwargs.items()])
            lines.append(f"{names[node]} = {constant(target)}({call_args})")
        elif node.op == "output":
            lines.append(f"return {arg(node.args[0])}")
            continue
        else:  # the recorder writes operators only
            raise Uncompilable(f"the recording holds a {node.op} node")
        dead = [names[n] for n, last in last_use.items() if last is node and n.op != "placeholder"]
        if dead:
            lines.append(f"del {', '.join(dead)}")
    source = f"def step({', '.join(params)}):\n" + "\n".join(f"    {line}" for line in lines) + "\n"
    exec(compile(source, "<ppdgm recording>", "exec"), scope)  # noqa: S102  (code generated from the graph above)
    return scope["step"]

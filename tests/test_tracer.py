"""The operation recorder (ppdgm.compile.tracer): a function recorded once replays what the eager function computes on
new inputs, follows tensors by identity (inputs, results, constants, in-place updates), and refuses host reads."""

import operator

import pytest
import torch

from ppdgm.compile.failures import Uncompilable
from ppdgm.compile.passes import straight_line
from ppdgm.compile.recording import record_graph
from ppdgm.compile.tracer import record_operations


def _replay(fn, inputs):
    """``fn`` recorded over ``inputs`` (run once, for real), as a function of new input tensors."""
    run = straight_line(record_graph(lambda: fn(*inputs), inputs))

    def replay(*new):
        with torch.no_grad():
            return run(*new)

    return replay


def test_a_replay_computes_what_the_function_computes_on_new_inputs_gradients_included():
    weight = torch.randn(3, 4, requires_grad=True)

    def fn(w, x):
        loss = torch.tanh(x @ w).pow(2).sum()
        (grad,) = torch.autograd.grad(loss, [w])
        return {"loss": loss.detach(), "grad": grad}

    replay = _replay(fn, [weight, torch.randn(5, 3)])
    for _ in range(3):
        w, x = torch.randn(3, 4, requires_grad=True), torch.randn(5, 3)
        expected = fn(w, x)
        got = replay(w, x)
        assert torch.equal(got["loss"], expected["loss"]) and torch.equal(got["grad"], expected["grad"])


def test_an_in_place_update_of_a_constant_reaches_the_live_tensor_on_every_replay():
    running = torch.zeros(4)  # like a batch-norm running mean: not an input, updated in place by the step
    x0 = torch.randn(2, 4)

    def fn(x):
        running.mul_(0.5).add_(x.mean(0))
        return x - running

    replay = _replay(fn, [x0])
    expected_running = 0.5 * torch.zeros(4) + x0.mean(0)  # the recording run was a real step
    assert torch.equal(running, expected_running)
    for _ in range(3):
        x = torch.randn(2, 4)
        expected_running = 0.5 * expected_running + x.mean(0)
        out = replay(x)
        assert torch.equal(running, expected_running)
        assert torch.equal(out, x - expected_running)


def test_a_tensor_made_in_the_function_is_a_fresh_copy_each_replay_and_lists_of_results_are_followed():
    def fn(x):
        scale = torch.tensor(2.0)
        first, second = torch.split(x, 2)
        return [first * scale, second.sum(), x]

    x0 = torch.arange(4.0)
    recorded = record_operations(lambda: fn(x0), [x0])
    targets = [n.target for n in recorded.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.lift_fresh_copy.default in targets and operator.getitem in targets
    replay = _replay(fn, [x0])
    x = torch.randn(4)
    got = replay(x)
    assert torch.equal(got[0], x[:2] * 2) and torch.equal(got[1], x[2:].sum())
    assert got[2] is x  # an input handed back unchanged is the input


def test_a_tensor_given_twice_is_one_input():
    a = torch.randn(3)
    recorded = record_operations(lambda: a * 2, [a, a])
    (mul,) = [n for n in recorded.graph.nodes if n.op == "call_function"]
    assert mul.args[0].name == "input_0"


@pytest.mark.parametrize(
    ("fn", "cause"),
    [
        (lambda x: x * 2 if x.sum() > 0 else x, "branches on a tensor's value"),
        (lambda x: x * x.max().item(), "reads a tensor on the host"),
        (lambda x: x[x > 0], "indexes with a boolean mask"),
    ],
    ids=["branch", "item", "mask"],
)
def test_a_host_read_is_refused_naming_the_line(fn, cause):
    x = torch.randn(4)
    with pytest.raises(Uncompilable, match=cause) as refused:
        record_graph(lambda: fn(x), [x])
    assert "test_tracer.py:" in str(refused.value)

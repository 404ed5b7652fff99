"""The conformance check: ppdgm's first-step loss and every gradient against Pyro's own ELBO, in float64.

ppdgm's data-side losses are per datapoint of the batch (the ELBO divided by the batch's rows, so that learning
rates do not depend on the batch size); Pyro's are totals. The check multiplies ours by the rows and asks for
agreement to ``1e-8`` in every parameter's gradient, from the same seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO

from ppdgm.inference import IWAE, VAE
from ppdgm.programs.batch import as_rows
from ppdgm.programs.batch import batch_size as rows_of
from ppdgm.programs.pair import ProgramPair

ATOL = 1e-8


def pyro_loss(elbo: Any, model: Callable, guide: Callable, data: Any) -> torch.Tensor:
    """Pyro's differentiable loss of ``elbo`` on ``data`` passed as ``SVI.step`` passes it."""
    if isinstance(data, dict):
        return elbo.differentiable_loss(model, guide, **data)
    if isinstance(data, tuple):
        return elbo.differentiable_loss(model, guide, *data)
    return elbo.differentiable_loss(model, guide, data)


def assert_same_objective(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    method: str = "vae",
    num_particles: int = 1,
    elbo: Any = None,
    seed: int = 0,
    pyro_data: Any = None,
    step_kwargs: dict[str, Any] | None = None,
    **pair_options: Any,
) -> ProgramPair:
    """ppdgm's loss times the batch's rows equals Pyro's loss, and so do the gradients of every parameter.

    ``elbo`` defaults to ``Trace_ELBO`` for ``vae`` and ``RenyiELBO(alpha=0)`` for ``iwae``; pass
    ``TraceEnum_ELBO(...)`` for enumerated programs. ``pyro_data`` is what ``SVI.step`` is given when it is not
    ``data`` itself (arguments built by ``arguments=``, ``step_kwargs`` appended). Returns the inspected pair.
    """
    x = as_rows(data)
    programs = ProgramPair(model, guide, **pair_options)
    programs.step_kwargs = dict(step_kwargs or {})
    programs.inspect(x)
    rows = rows_of(x)
    names = [*programs.structure.model_param_names, *programs.structure.guide_param_names]
    params = programs.param_tensors(names)
    assert params, "the pair has no parameters to compare gradients of"
    pyro.set_rng_seed(seed)
    if method == "vae":
        ours = VAE(num_particles=num_particles).loss(programs, x)[0] * rows
    else:
        ours = IWAE(num_particles=num_particles).loss(programs, x)[0] * rows
    if programs.auxiliary:  # fit(auxiliary=...): their ELBOs join the loss, as a further SVI loss does in Pyro
        ours = ours + programs.auxiliary_loss(x) * rows
    if elbo is None:
        elbo = (
            Trace_ELBO()
            if method == "vae"
            else RenyiELBO(alpha=0, num_particles=num_particles, vectorize_particles=True, max_plate_nesting=2)
        )
    pyro.set_rng_seed(seed)
    if isinstance(elbo, RenyiELBO):  # Pyro offers only the float and .grad here
        for p in params:
            p.grad = None
        theirs = torch.tensor(_renyi(elbo, model, guide, data if pyro_data is None else pyro_data), dtype=ours.dtype)
        their_grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    else:
        theirs = pyro_loss(elbo, model, guide, data if pyro_data is None else pyro_data)
        for aux in programs.auxiliary:
            theirs = theirs + aux.weight * pyro_loss(Trace_ELBO(), aux.model, aux.guide, data)
        their_grads = torch.autograd.grad(theirs, params, allow_unused=True)
        their_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, their_grads)]
    assert torch.allclose(ours.detach(), theirs.detach(), atol=ATOL, rtol=0), (ours.item(), theirs.item())
    our_grads = torch.autograd.grad(ours, params, allow_unused=True)
    for name, p, a, b in zip(names, params, our_grads, their_grads):
        a = torch.zeros_like(p) if a is None else a
        assert torch.allclose(a, b, atol=ATOL, rtol=0), (name, (a - b).abs().max().item())
    return programs


def _renyi(elbo: RenyiELBO, model: Callable, guide: Callable, data: Any) -> float:
    if isinstance(data, dict):
        return elbo.loss_and_grads(model, guide, **data)
    if isinstance(data, tuple):
        return elbo.loss_and_grads(model, guide, *data)
    return elbo.loss_and_grads(model, guide, data)


__all__ = ["ATOL", "TraceEnum_ELBO", "assert_same_objective", "pyro_loss"]

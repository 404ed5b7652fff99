"""Data-parallel training over ``torch.distributed`` ranks (``torchrun``).

A distributed fit runs the same method on every rank. Each global minibatch (the one a single
process would take) is split into contiguous row blocks, one per rank, and every player's
gradients are averaged across ranks before its optimizer steps. Three choices make the result the
same as one process at the global batch size, to float tolerance:

* **Gradients are all-reduced per player inside** :meth:`ppdgm.methods.engine.Engine.update`, one flat
  bucket per player and phase. PyTorch's ``DistributedDataParallel`` synchronises only gradients
  produced by a forward pass through its wrapper; Pyro programs call the user's modules directly
  (``pyro.module``), so wrapping them would synchronise nothing. Reducing per player also means a
  phase that moves only some players reduces only theirs: there is no "unused parameter" hang.
  A rank whose block is smaller (the last, partial batch) weighs its gradient by its share of
  the rows, so the average is the gradient of the global per-datapoint mean.
* **Random numbers are drawn for the whole global batch.** Every rank holds the same random
  stream (same seed). At a sample site inside the data plate, :class:`ShardedSampling` draws the
  site's value for all global rows, in the layout one process would use, and keeps the rank's
  block: the rank's latents are bit for bit those one process would draw for the same rows, and
  the stream stays in step on every rank. A checkpoint's random state therefore resumes the run
  on any number of ranks. Sites outside the data plate (global latents) are drawn whole, as one
  process would. The extra draws cost little next to the networks.
* **Data order** is the single-process order: the epoch's permutation depends on (seed, epoch)
  only, and rank r takes block r of every minibatch.

What breaks exact equivalence (training still works, the result is simply not the one-process
one): networks with batch statistics (batch norm), estimators that couple the rows of a batch
(GMMN's MMD, a median heuristic), and distributions :class:`ShardedSampling` cannot widen (it
then raises, naming the site). Gradients of players whose phase did not reach a parameter stay
``None`` on every rank alike, as long as the programs have no data-dependent control flow.
"""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from ppdgm.programs.handlers import ShardedSampling

__all__ = [
    "Context",
    "ShardedSampling",
    "block",
    "context",
    "exit_job",
    "is_main",
    "rank",
    "world_size",
]


@dataclass(frozen=True)
class Context:
    """Where this process stands in a distributed job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def context(device: torch.device) -> Context | None:
    """The job this process belongs to, or ``None`` for a single-process run.

    Joins the process group when ``torchrun`` started the process (``WORLD_SIZE`` > 1 in the
    environment) and none is initialised yet: NCCL for a CUDA device, gloo on CPU. A process group
    the caller initialised (e.g. in spawned test processes) is used as it is.
    """
    if not torch_dist.is_available():
        if _env_world_size() > 1:
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        return None
    if not torch_dist.is_initialized():
        if _env_world_size() <= 1:
            return None
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend=backend)
        atexit.register(_leave)
    if torch_dist.get_world_size() == 1:
        return None
    backend = torch_dist.get_backend()
    if device.type == "cuda" and backend != "nccl":
        raise RuntimeError(f"a CUDA run needs the nccl backend, the process group uses {backend!r}")
    return Context(
        rank=torch_dist.get_rank(),
        world_size=torch_dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", torch_dist.get_rank())),
        backend=backend,
    )


def _leave() -> None:
    """Leave a process group ppdgm joined before the interpreter tears down (its threads otherwise may not be)."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def exit_job(code: int) -> None:
    """End a ppdgm entry point run by ``torchrun`` (``ppdgm train``, a comparison's worker) with status ``code``.

    Every rank first waits for the others (rank 0 may still be evaluating and writing the run's files), then leaves
    the process group and exits at once: the interpreter's teardown with torch.distributed loaded aborted now and
    then in native code (SIGABRT, "terminate called without an active exception"), after the work was done, and
    ``torchrun`` then killed the ranks still writing. Outside a job (no ``WORLD_SIZE`` > 1) this is
    ``sys.exit(code)``; a rank whose process group is already left (a comparison's rank > 0 once trained) exits at
    once, and rank 0 ends its work alone.
    """
    if _env_world_size() <= 1:
        sys.exit(code)
    if torch_dist.is_available() and torch_dist.is_initialized():
        if code == 0:
            torch_dist.barrier()
        torch_dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def rank() -> int:
    """This process's rank (0 outside a distributed job)."""
    return torch_dist.get_rank() if torch_dist.is_available() and torch_dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 outside a distributed job)."""
    return torch_dist.get_world_size() if torch_dist.is_available() and torch_dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes files and prints: rank 0, or a single-process run."""
    return rank() == 0


def block(num_rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(offset, size)`` of rank ``rank``'s contiguous block of ``num_rows`` rows (sizes differ by at most one)."""
    base, extra = divmod(num_rows, world_size)
    size = base + (rank < extra)
    return rank * base + min(rank, extra), size


class GradientSync:
    """Averages the moving players' gradients over the ranks: one flat all-reduce per phase.

    ``weight`` is this rank's share of the current global batch times the number of ranks (1 when
    the blocks are equal), so the average is the gradient of the global per-datapoint mean.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.weight = 1.0

    def __call__(self, params: list[torch.Tensor]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        if self.weight != 1.0:
            flat.mul_(self.weight)
        torch_dist.all_reduce(flat)
        flat.div_(self.ctx.world_size)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def broadcast(self, params: list[torch.Tensor]) -> None:
        """Give every rank rank 0's values (identical seeds already agree; this makes sure)."""
        with torch.no_grad():
            for p in params:
                torch_dist.broadcast(p.data, src=0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks (itself outside a distributed job)."""
    if world_size() == 1:
        return tensor
    out = tensor.clone()
    torch_dist.all_reduce(out)
    return out

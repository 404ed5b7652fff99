"""Divergence: a non-finite loss or parameter stops training with a diagnosis, before anything is saved.

The trainer keeps each epoch's metric sums on the device; every ``log_every`` steps and at the end of
each epoch one small reduction says whether they (and, at the epoch's end, every parameter) are
finite — one host read per check, none per step. On a non-finite value :func:`diagnose` names the steps,
the metrics (which say the phase: ``wake_log_joint``, ``discriminator_loss``...), the players whose
parameters went non-finite and the first site whose log-density did on the last batch, and
:class:`TrainingDiverged` is raised: the checkpoint on disk is the last finite epoch's.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyro
import pyro.poutine as poutine
import torch

from ppdgm.errors import PpdgmError
from ppdgm.methods.engine import Engine
from ppdgm.programs.batch import Data
from ppdgm.programs.handlers import distribution_of
from ppdgm.programs.pair import ProgramPair
from ppdgm.programs.sites import sample_sites
from ppdgm.runtime import distributed


class TrainingDiverged(PpdgmError, RuntimeError):
    """Training produced a non-finite loss or parameter; the message says where."""


def all_finite(values: list[torch.Tensor]) -> bool:
    """Whether every tensor is finite, on every rank: one reduction and one host read."""
    if not values:
        return True
    bad = torch.stack([(~torch.isfinite(v.detach())).any() for v in values]).any().double()
    return float(distributed.all_reduce_sum(bad)) == 0.0


def params_finite(engine: Engine) -> bool:
    return all_finite([p for player in engine.players.values() for p in player.params])


def diagnose(
    programs: ProgramPair,
    engine: Engine,
    sums: Mapping[str, torch.Tensor],
    batch: Data | None,
    first_step: int,
    last_step: int,
    checkpoint: str | None,
) -> TrainingDiverged:
    """The error that stops a diverged fit, naming what went non-finite."""
    bad_metrics = [k for k, v in sums.items() if not bool(torch.isfinite(v).all())]
    players = [
        name for name, player in engine.players.items() if not all(bool(torch.isfinite(p).all()) for p in player.params)
    ]
    where = f"step {last_step}" if first_step == last_step else f"steps {first_step} to {last_step}"
    parts = [f"training diverged ({where})"]
    if bad_metrics:
        parts.append(f"non-finite {', '.join(bad_metrics)}")
    if players:
        parts.append(f"non-finite parameters of player(s) {players}")
    site = _first_bad_site(programs, batch) if batch is not None else None
    if site is not None:
        parts.append(f"first non-finite log-density at {site}")
    kept = f"The checkpoint in {checkpoint} holds the last finite epoch" if checkpoint else "Nothing was saved"
    return TrainingDiverged(
        "; ".join(parts) + f". {kept}; lower the learning rate (or check the data and the programs) and run again"
    )


@torch.no_grad()
def _first_bad_site(programs: ProgramPair, batch: Data) -> str | None:
    """The first site, guide then model, whose log-density is not finite on ``batch`` with the current parameters."""
    try:
        with poutine.block(), pyro.validation_enabled(False):  # NaN parameters: scores, not constructor errors
            side = programs.data_side(batch, 1)
    except Exception as err:  # a program that fails on non-finite parameters: say so, not where
        return f"none found: the programs raise {type(err).__name__} on the last batch"
    for role, trace in (("guide", side.guide_trace), ("model", side.model_trace)):
        for name, site in sample_sites(trace).items():
            log_prob = distribution_of(site).log_prob(site["value"])
            if not bool(torch.isfinite(torch.as_tensor(log_prob)).all()):
                return f"site {name!r} of the {role}"
    return None

"""What re-checking a compiled step's recording costs, amortised over the steps between re-checks.

A re-check (ppdgm.compile.step.CompiledStep.due) runs the recording and the eager step from the same point, with
snapshots of parameters, optimizer states and generator state, and keeps the eager step as the real one. This
script times a replayed step and a re-check of the same recording, interleaved, and prints the re-check's extra
time in replayed steps and as a share of training time at the re-check schedule (every ``RECHECK_EVERY`` steps,
and the densest epoch-start schedule, every ``RECHECK_EVERY / 2``).

    python bench/recheck_cost.py [--data-dir DIR] [--batch-size 100] [--rounds 5] [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pyro
import torch
from step_time import load_batches  # bench/ is the script's folder

import ppdgm
from ppdgm.compile.step import RECHECK_EVERY, CompiledStep
from ppdgm.methods.engine import Engine
from ppdgm.programs.pair import ProgramPair
from ppdgm.zoo import build


def _stepper(method: str, x: torch.Tensor, **options) -> CompiledStep:
    model, guide = build("iwae-1layer", 784)
    programs = ProgramPair(model, guide)
    structure = programs.inspect(x)
    chosen = ppdgm.get_method(method, **options)
    chosen.setup(programs)
    engine = Engine(programs, {"model": structure.model_param_names, "guide": structure.guide_param_names})
    return CompiledStep(chosen, engine, compile=True, eager_steps=0, recheck_every=10**9)


def measure(method: str, batches: list[torch.Tensor], rounds: int, steps: int, **options) -> tuple[float, float]:
    """Median seconds of a replayed step and of a re-check of the same recording."""
    pyro.clear_param_store()
    step = _stepper(method, batches[0], **options)
    replays, rechecks = [], []
    with pyro.validation_enabled(False):
        for x in batches[:3]:  # recorded and checked, first replay re-checked, one replay
            step(x)
        recording = next(iter(step.recordings.values()))
        for _ in range(rounds):
            for i in range(steps):
                x = batches[i % len(batches)]
                tic = time.perf_counter()
                step(x)
                replays.append(time.perf_counter() - tic)
                tic = time.perf_counter()
                step._recheck(recording, x, ())
                rechecks.append(time.perf_counter() - tic)
    assert step.fallback is None, step.fallback
    return statistics.median(replays), statistics.median(rechecks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(0)
    batches = load_batches(args.data_dir, args.batch_size, torch.device("cpu"))
    print(f"iwae-1layer networks, re-checks every {RECHECK_EVERY} steps")
    every, densest = RECHECK_EVERY, RECHECK_EVERY // 2
    print(
        f"| method | replayed step ms | re-check ms | extra, in steps | every {every} steps | every {densest} steps |"
    )
    print("|---|---|---|---|---|---|")
    for method, options in (("vae", {}), ("iwae", {"num_particles": 5})):
        replay, recheck = measure(method, batches, args.rounds, args.steps, **options)
        extra = recheck / replay - 1  # a re-check replaces one step
        label = method if not options else f"{method} K={options['num_particles']}"
        print(
            f"| {label} | {1e3 * replay:.2f} | {1e3 * recheck:.2f} | {extra:.2f} | "
            f"{100 * extra / every:.2f}% | {100 * extra / densest:.2f}% |"
        )


if __name__ == "__main__":
    main()

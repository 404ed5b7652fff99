"""Whole short fits: ``ppdgm.fit`` for 200 and 1,000 steps against the best hand-written loop (fused Adam).

A user's fit is timed from the call to its return — inspection of the programs, the first (eager) step, the
recording of the step and its checks included — against a hand-written PyTorch loop over the same rows (a seeded
permutation per epoch, then its batches) with ``torch.optim.Adam(fused=True)``. Rounds are interleaved; the table
gives medians and the min-max of the ratio over rounds. From the two lengths, each implementation's fixed cost:
``T(200) - 200 * (T(1000) - T(200)) / 800``, also in steps of its own steady step.

    python bench/short_fits.py [--data-dir DIR] [--rounds 3] [--methods vae iwae5 iwae50 rws gan]
    python bench/short_fits.py --first-steps [--rounds 5] [--methods vae iwae5]

``--first-steps`` says where a fit's fixed cost goes instead: whole fits of 1, 2 and 3 steps (the first step is
eager; the second is recorded and checked against the step it was recorded from; the third, the recording's first
replay, is re-checked against the eager step), so the differences are each first step's time, against the steady
step of a 200-step fit.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from step_time import HandWritten, HandWrittenGAN, HandWrittenSBN, load_batches

import ppdgm
from ppdgm.guides import MLPDiscriminator
from ppdgm.models import MLPGenerator
from ppdgm.zoo import build

LENGTHS = (200, 1000)


def _vae_case(k: int) -> Callable:
    def make(device: torch.device) -> tuple:
        model, guide = build("iwae-1layer", 784)
        model.to(device)
        guide.to(device)
        options = {} if k == 1 else {"num_particles": k}
        return HandWritten(model, guide, k, fused=True).step, (model, guide, "vae" if k == 1 else "iwae", options)

    return make


def _rws_case(device: torch.device) -> tuple:
    model, guide = build("helmholtz", 784, layers=(200,))
    model.to(device)
    guide.to(device)
    return HandWrittenSBN(model, guide, "rws", 5, fused=True).step, (model, guide, "rws", {"num_particles": 5})


def _gan_case(device: torch.device) -> tuple:
    gen = MLPGenerator(784, z_dim=64, hidden=(256, 256), activation="relu", output="sigmoid").to(device)
    disc = MLPDiscriminator(784, (256, 256)).to(device)
    hand = HandWrittenGAN(gen.net, disc.net, 64, strict=True, fused=True).step
    return hand, (gen, None, "gan", {"discriminator": disc})


CASES = {
    "vae": ("vae", _vae_case(1), 100),
    "iwae5": ("iwae K=5", _vae_case(5), 100),
    "iwae50": ("iwae K=50", _vae_case(50), 100),
    "rws": ("rws K=5 (784-200 SBN)", _rws_case, 100),
    "gan": ("gan (MLP 64-256-256-784)", _gan_case, 64),
}


def _hand_loop(step: Callable, x: torch.Tensor, steps: int, batch_size: int) -> float:
    generator = torch.Generator().manual_seed(0)
    tic = time.perf_counter()
    taken = 0
    while taken < steps:
        for rows in torch.randperm(len(x), generator=generator).to(x.device).split(batch_size):
            if len(rows) < batch_size or taken == steps:
                break
            step(x[rows])
            taken += 1
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - tic


def _ppdgm_fit(spec: tuple, x: torch.Tensor, steps: int, batch_size: int, device: str) -> float:
    model, guide, method, options = spec
    tic = time.perf_counter()
    ppdgm.fit(
        model, guide, x, method, steps=steps, batch_size=batch_size, device=device, progress=False,
        validate_every=0, **options,
    )  # fmt: skip
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - tic


def _one(name: str, length: int, x: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    _, make, batch_size = CASES[name]
    times = {}
    for who in ("hand", "ppdgm"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        hand, spec = make(x.device)
        if who == "hand":
            times[who] = _hand_loop(hand, x, length, batch_size)
        else:
            times[who] = _ppdgm_fit(spec, x, length, batch_size, args.device)
    return times


def _fixed(short: float, long: float) -> tuple[float, float]:
    """Seconds a fit costs beyond its steady steps, and that in steady steps."""
    per_step = (long - short) / (LENGTHS[1] - LENGTHS[0])
    fixed = short - LENGTHS[0] * per_step
    return fixed, fixed / per_step


def first_steps(x: torch.Tensor, args: argparse.Namespace) -> None:
    """Fits of 1, 2, 3 and 200 steps (median over rounds): the time from ``fit`` to each of the first steps."""
    print(f"\nThe first steps of a fit on {len(x)} rows, medians of {args.rounds} rounds (milliseconds):")
    print(
        "| method | fit of 1 step | step 2 (recorded, checked) | step 3 (first replay, re-checked) | steady step "
        "| fit start to the first compiled step, in steady steps |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.methods:
        _, make, batch_size = CASES[name]
        times: dict[int, list[float]] = {n: [] for n in (1, 2, 3, 200)}
        for _ in range(args.rounds):
            for n in times:
                pyro.clear_param_store()
                torch.manual_seed(0)
                times[n].append(_ppdgm_fit(make(x.device)[1], x, n, batch_size, args.device))
        t = {n: statistics.median(v) for n, v in times.items()}
        steady = (t[200] - t[3]) / 197
        cells = [CASES[name][0], f"{1e3 * t[1]:.1f}", f"{1e3 * (t[2] - t[1]):.1f}", f"{1e3 * (t[3] - t[2]):.1f}"]
        cells += [f"{1e3 * steady:.2f}", f"{t[2] / steady:.1f}"]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--first-steps", action="store_true", help="where the fixed cost goes (see above)")
    args = parser.parse_args()
    x = torch.cat(load_batches(args.data_dir, 100, torch.device(args.device), count=args.rows // 100))
    if args.first_steps:
        first_steps(x, args)
        return
    print(
        f"\nWhole fits on {len(x)} rows, {args.rounds} rounds interleaved, torch threads {torch.get_num_threads()}: "
        "seconds (median), ppdgm.fit / hand-written loop with fused Adam (median, min-max over rounds), fixed cost "
        "(seconds, and in steady steps of each)"
    )
    print(
        "| method | steps | hand-written (fused Adam) s | ppdgm.fit s | ratio (min-max) "
        "| fixed cost hand | fixed cost ppdgm |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.methods:
        results: dict[int, list[dict[str, float]]] = {n: [] for n in LENGTHS}
        for _ in range(args.rounds):
            for length in LENGTHS:
                results[length].append(_one(name, length, x, args))
        med = {n: {w: statistics.median(r[w] for r in results[n]) for w in ("hand", "ppdgm")} for n in LENGTHS}
        fixed = {w: _fixed(med[LENGTHS[0]][w], med[LENGTHS[1]][w]) for w in ("hand", "ppdgm")}
        for length in LENGTHS:
            ratios = [r["ppdgm"] / r["hand"] for r in results[length]]
            h, o = med[length]["hand"], med[length]["ppdgm"]
            cells = [CASES[name][0], str(length), f"{h:.3f}", f"{o:.3f}"]
            cells.append(f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
            cells += [f"{fixed[w][0]:.3f} s ({fixed[w][1]:.1f} steps)" for w in ("hand", "ppdgm")]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

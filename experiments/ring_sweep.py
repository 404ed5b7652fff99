"""Sweep adversarial settings on the 8-Gaussian ring: mode coverage and sample quality per seed.

Each run fits the ``gan-mlp`` pair (z 2, hidden 256-256, Normal x site of scale 0.02) on ``ring8``
with the modes preset's optimizer (Adam, betas 0.5/0.999, batch 256, learning rate decayed linearly
to 0; the encoder Gaussian, or :class:`~ppdgm.guides.ImplicitMLPEncoder` with ``"encoder": "implicit"``),
then scores 2500 samples with :func:`ppdgm.evaluate.mixture_quality`. Runs go to a process pool, one
torch thread each; the table gives modes and high-quality percentage per seed.

    python experiments/ring_sweep.py --method bigan --steps 30000 --seeds 0 1 2 \\
        --config base='{}' wideD='{"discriminator_hidden": [256, 256]}' --out sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time

import pyro
import torch

import ppdgm
from ppdgm.evaluate import mixture_quality
from ppdgm.evaluate.sampling import generate
from ppdgm.zoo import build


def run_one(job: tuple[str, str, int, int, dict]) -> dict:
    """Fit one (config, seed) and score its samples."""
    label, method, steps, seed, options = job
    torch.set_num_threads(1)
    pyro.clear_param_store()
    options = dict(options)
    lr = options.pop("lr", 1e-3)
    batch_size = options.pop("batch_size", 256)
    encoder = options.pop("encoder", "gaussian")
    tic = time.perf_counter()
    torch.manual_seed(seed)
    model, guide = build("gan-mlp", 2, z_dim=2, hidden=[256, 256], noise_scale=0.02, encoder=encoder)
    run = ppdgm.fit(
        model, guide, "ring8", method, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=False,
        optimizer_options={"betas": (0.5, 0.999)}, lr_schedule="linear", validate_every=0, **options,
    )  # fmt: skip
    torch.manual_seed(seed)
    with run.params():
        samples = generate(model, 2500, mean=False).reshape(2500, 2)
    quality = mixture_quality(samples, *ppdgm.data.mixture_centres("ring8"))
    return {"config": label, "seed": seed, "seconds": time.perf_counter() - tic, **quality}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="bigan")
    parser.add_argument("--steps", type=int, default=30000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", nargs="+", default=["base={}"], help="label=JSON options of ppdgm.fit")
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON lines, appended as runs finish")
    args = parser.parse_args()
    configs = dict(c.split("=", 1) for c in args.config)
    jobs = [(label, args.method, args.steps, s, json.loads(o)) for label, o in configs.items() for s in args.seeds]
    processes = args.processes or min(len(jobs), multiprocessing.cpu_count())
    results = []
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        # results are written as they come, so that a sweep cut short keeps its finished runs
        for result in pool.imap_unordered(run_one, jobs, chunksize=1):
            results.append(result)
            print(json.dumps(result), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps({"method": args.method, "steps": args.steps, **result}) + "\n")
    print(f"{args.method}, {args.steps} steps; modes / high-quality % per seed")
    for label, opts in configs.items():
        rows = sorted((r for r in results if r["config"] == label), key=lambda r: r["seed"])
        cells = ", ".join(f"{r['mode_coverage']:.0f}/{100 * r['high_quality_fraction']:.0f}%" for r in rows)
        print(f"| {label} | {opts} | {cells} | {max(r['seconds'] for r in rows):.0f} s |")


if __name__ == "__main__":
    main()

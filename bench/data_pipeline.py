"""What reading batches through a torch Dataset costs: ``ppdgm.fit`` step time per data source, against rows in memory.

    python bench/data_pipeline.py [--rows 20000] [--steps 200] [--rounds 3]

The same VAE (784-200-200-50, batch 100, dynamic binarization) trains on random 8-bit 28x28 images given as
(a) a float tensor in memory, (b) a :class:`ppdgm.data.images.ImageSet` (one gather per batch), (c) a
``TensorDataset`` read item by item through a DataLoader, (d) the same with 2 workers. Seconds are the
epochs' (reading, transforming and stepping), not fit's one-time set-up. Rounds are interleaved; the table
prints the median seconds per step and the ratio to (a).
"""

from __future__ import annotations

import argparse
import statistics

import pyro
import torch
from torch.utils.data import DataLoader, TensorDataset

import ppdgm
from ppdgm.data.images import ImageSet
from ppdgm.zoo import build


def step_seconds(data, steps: int, batch_size: int) -> float:
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = build("iwae-1layer", 784)
    run = ppdgm.fit(
        model, guide, data, "vae", steps=steps, batch_size=batch_size, transform="binarize", progress=False,
        validate_every=0,
    )  # fmt: skip
    return run.seconds / steps  # the epochs' time: reading, transforming and training; not the set-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.rows, 1, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (args.rows,), generator=gen)
    rows = images.reshape(args.rows, -1).float() / 255
    sources = {
        "tensor in memory": lambda: rows,
        "ImageSet (8-bit, gathered per batch)": lambda: ImageSet(images, labels),
        "TensorDataset, DataLoader item by item": lambda: TensorDataset(rows),
        "TensorDataset, DataLoader, 2 workers": lambda: DataLoader(
            TensorDataset(rows), batch_size=args.batch_size, shuffle=True, num_workers=2, persistent_workers=True
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(args.rounds):
        for name, make in sources.items():
            times[name].append(step_seconds(make(), args.steps, args.batch_size))
    base = statistics.median(times["tensor in memory"])
    print(f"| source | ms/step (median of {args.rounds}) | ratio to the tensor |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {1000 * median:.2f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()

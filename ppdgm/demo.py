"""``make demo``: train ``vae`` and ``iwae`` on the embedded binary digits and compare them.

About a minute on 2 CPU cores. Prints a table (method, test log-likelihood ± standard error,
training time) and writes sample grids and the table under ``out``.
"""

from __future__ import annotations

import time
from pathlib import Path

import ppdgm
from ppdgm.presets import build
from ppdgm.sampling import generate, save_image_grid

METHODS: list[tuple[str, dict]] = [("vae", {}), ("iwae", {"num_particles": 5})]
DEFAULT_EPOCHS = 200


def main(out: Path = Path("runs/demo"), epochs: int | None = None, num_samples: int = 1000, seed: int = 0) -> int:
    data = ppdgm.data.load("digits-binary")
    epochs = epochs or DEFAULT_EPOCHS
    rows = []
    for method, options in METHODS:
        model, guide = build("vae-mlp", data.dim, z_dim=10, hidden=(128,))
        label = method + "".join(f" k={v}" for v in options.values())
        print(f"== {label}: {epochs} epochs of digits-binary ({data.train.shape[0]} train, {data.test.shape[0]} test)")
        run = ppdgm.fit(
            model,
            guide,
            data,
            method,
            epochs=epochs,
            batch_size=100,
            lr=3e-3,
            seed=seed,
            checkpoint_dir=out / method,
            **options,
        )
        tic = time.perf_counter()
        ll = ppdgm.evaluate.log_likelihood(model, guide, data.test, num_samples=num_samples)
        eval_seconds = time.perf_counter() - tic
        run.save(out / method / "params.pt")
        grid = save_image_grid(generate(model, 64), data.image_shape, out / method / "samples.png")
        rows.append((label, ll, run.seconds, eval_seconds, grid))
    header = f"| method | test log-likelihood ({num_samples} IS samples) | train seconds | eval seconds |"
    lines = [header, "|---|---|---|---|"]
    lines += [f"| {label} | {ll} | {train:.1f} | {ev:.1f} |" for label, ll, train, ev, _ in rows]
    table = "\n".join(lines)
    print()
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table + "\n")
    for label, *_, grid in rows:
        print(f"samples ({label}): {grid}")
    return 0

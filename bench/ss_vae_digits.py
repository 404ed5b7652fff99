"""Pyro's semi-supervised VAE as its example writes it, trained by ppdgm on a labelled and an unlabelled stream.

The model, guide and auxiliary classification pair are those of ``tests/conformance/test_ss_vae.py`` (the example's
``SSVAE`` class at small sizes). Data: sklearn's 8x8 digits, binarised, ``--per-class`` labelled rows per class, the
other training rows unlabelled, 400 test rows. Prints the test accuracy of the guide's classifier against logistic
regression trained on the labelled rows alone, with and without the auxiliary loss, for each seed.

    python bench/ss_vae_digits.py [--per-class 5] [--epochs 40] [--seeds 0 1 2] [--compile auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import config_enumerate
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.conformance

import ppdgm  # noqa: E402
from tests.conformance.test_ss_vae import SSVAE, digits  # noqa: E402


def accuracy(ss_vae: SSVAE, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((ss_vae.classifier(x).argmax(-1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--compile", default="auto", choices=["auto", "off"])
    args = parser.parse_args()
    compile_mode = "auto" if args.compile == "auto" else False
    rows: dict[str, list[float]] = {"logistic regression, labelled rows": [], "ss-vae + auxiliary loss": [],
                                    "ss-vae, no auxiliary loss": []}  # fmt: skip
    for seed in args.seeds:
        (xs, ys), unlabelled, (x_test, y_test) = digits(args.per_class, seed=seed)
        baseline = LogisticRegression(max_iter=2000).fit(xs.numpy(), ys.argmax(-1).numpy())
        rows["logistic regression, labelled rows"].append(
            float((torch.tensor(baseline.predict(x_test.numpy())) == y_test).float().mean())
        )
        for label, with_aux in (("ss-vae + auxiliary loss", True), ("ss-vae, no auxiliary loss", False)):
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            ss_vae = SSVAE()
            tic = time.perf_counter()
            ppdgm.fit(
                ss_vae.model,
                config_enumerate(ss_vae.guide, "parallel", expand=True),
                ppdgm.Interleaved((xs, ys), unlabelled),
                "vae",
                epochs=args.epochs,
                batch_size=50,
                lr=3e-3,
                seed=seed,
                auxiliary=[(ss_vae.model_classify, ss_vae.guide_classify)] if with_aux else (),
                compile=compile_mode,
                progress=False,
            )
            rows[label].append(accuracy(ss_vae, x_test, y_test))
            print(f"seed {seed}: {label}: {rows[label][-1]:.3f} ({time.perf_counter() - tic:.1f} s)", flush=True)
    print(f"\n{args.per_class} labelled rows per class, {args.epochs} epochs, seeds {args.seeds}\n")
    print("| | test accuracy, mean ± std |\n|---|---|")
    for label, values in rows.items():
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"| {label} | {statistics.mean(values):.3f} ± {spread:.3f} |")


if __name__ == "__main__":
    main()

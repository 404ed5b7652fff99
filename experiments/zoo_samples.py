"""Samples of PixelCNN, RBM and DBN trained on the embedded binary digits: docs/figures/zoo-digits.png.

    python experiments/zoo_samples.py [--out docs/figures/zoo-digits.png]

Prints each model's exact (PixelCNN, RBM) or importance-sampled (DBN) test log-likelihood.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import ppdgm  # noqa: E402
from ppdgm.evaluate.sampling import generate, image_grid  # noqa: E402
from ppdgm.models import DBN, RBM, PixelCNN  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/figures/zoo-digits.png")
    args = parser.parse_args()
    data = ppdgm.data.load("digits-binary")
    panels = []

    torch.manual_seed(0)
    pixelcnn = PixelCNN((8, 8), channels=32, layers=4, kernel_size=3)
    ppdgm.fit(pixelcnn, None, data, "mle", epochs=30, lr=3e-3, progress=False)
    print(
        "pixelcnn (mle, 30 epochs): exact test log-likelihood", ppdgm.evaluate.exact_log_likelihood(pixelcnn, data.test)
    )
    torch.manual_seed(1)
    panels.append(("PixelCNN (mle)", generate(pixelcnn, 64, mean=False)))

    torch.manual_seed(0)
    rbm = RBM(64, 16, sample_steps=1000)
    ppdgm.fit(rbm, None, data, "pcd", epochs=100, lr=0.01, progress=False)
    print("rbm (pcd, 100 epochs): exact test log-likelihood", ppdgm.evaluate.exact_log_likelihood(rbm, data.test))
    torch.manual_seed(1)
    panels.append(("RBM, 16 hidden (pcd)", generate(rbm, 64, mean=False)))

    torch.manual_seed(0)
    dbn = DBN((64, 32, 12), sample_steps=500)
    dbn.pretrain(data, epochs=20, lr=0.02)
    dbn.normalise_top()
    ppdgm.fit(dbn.model, dbn.guide, data, "ws", epochs=20, lr=1e-3, progress=False)
    print(
        "dbn (cd pre-training + ws): IS test log-likelihood",
        ppdgm.evaluate.log_likelihood(dbn.model, dbn.guide, data.test, num_samples=1000),
    )
    torch.manual_seed(1)
    panels.append(("DBN 64-32-12 (cd + ws), p(x | h1)", generate(dbn.model, 64)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (title, images) in zip(axes, panels):
        ax.imshow(image_grid(images, (8, 8)), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print("wrote", args.out)


if __name__ == "__main__":
    main()

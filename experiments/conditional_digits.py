"""Conditional and semi-supervised models on the embedded digits: the tables of docs/programs.md.

    python experiments/conditional_digits.py [--seeds 0 1] [--splits 0 1 2] [--alphas 4 8 16]

* class-conditional VAE and conditional GANs (``gan``, ``iwgan``): the share of samples a classifier of the
  digits assigns to the digit they were asked for;
* M2 with 10 labels per class: test accuracy of q(y | x) against classifiers of the labelled rows alone.
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.linear_model import LogisticRegression
from torch.nn import functional as F

import ppdgm
from ppdgm.models import ConditionalGenerator, ConditionalVAE, SemiSupervisedVAE


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    return F.one_hot(labels.long(), 10).float()


def accuracy(classifier, x: torch.Tensor, labels: torch.Tensor) -> float:
    return float((classifier(x.reshape(x.shape[0], -1)).argmax(-1) == labels).float().mean())


def conditional(seeds: list[int], steps: list[int]) -> None:
    wanted = torch.arange(10).repeat_interleave(100)
    binary, grey = ppdgm.data.load("digits-binary"), ppdgm.data.load("digits")
    for data in (binary, grey):
        data.classifier = ppdgm.evaluate.train_classifier(data.train, data.labels["train"])
    print(f"classifier of the digits, test accuracy: {accuracy(grey.classifier, grey.test, grey.labels['test']):.4f}")
    print("| model | steps | seed | asked-for digit | inception score | seconds |\n|---|---|---|---|---|---|")
    for seed in seeds:
        tic = time.perf_counter()
        cvae = ConditionalVAE(64, 10)
        labels = one_hot(binary.labels["train"])
        run = ppdgm.fit(cvae.model, cvae.guide, (binary.train, labels), "vae", epochs=100, lr=3e-3, seed=seed)
        samples = ppdgm.sample(run, condition=one_hot(wanted), mean=True)
        score = ppdgm.evaluate.classifier_scores(binary.classifier, samples)["inception_score"]
        print(
            f"| cvae | 100 epochs | {seed} | {accuracy(binary.classifier, samples, wanted):.3f} | {score:.2f} | "
            f"{time.perf_counter() - tic:.1f} |"
        )
    for method in ("gan", "iwgan"):
        for n in steps:
            for seed in seeds:
                tic = time.perf_counter()
                run = ppdgm.fit(
                    ConditionalGenerator(64, 10),
                    None,
                    (grey.train, one_hot(grey.labels["train"])),
                    method,
                    steps=n,
                    batch_size=64,
                    lr=1e-3,
                    optimizer_options={"betas": (0.5, 0.999)},
                    seed=seed,
                )
                samples = ppdgm.sample(run, condition=one_hot(wanted))
                score = ppdgm.evaluate.classifier_scores(grey.classifier, samples)["inception_score"]
                print(
                    f"| {method} | {n} | {seed} | {accuracy(grey.classifier, samples, wanted):.3f} | {score:.2f} | "
                    f"{time.perf_counter() - tic:.1f} |"
                )


def semi_supervised(splits: list[int], alphas: list[float]) -> None:
    data = ppdgm.data.load("digits-binary")
    labels, test_labels = data.labels["train"], data.labels["test"]
    print(
        "\n| split | MLP on labelled rows | logistic regression | "
        + " | ".join(f"M2, α = {a:g}" for a in alphas)
        + " |"
    )
    print("|---" * (3 + len(alphas)) + "|")
    for split in splits:
        labelled = ppdgm.data.labelled_subset(labels, 10, split)
        y = one_hot(torch.where(labelled, labels, 0))
        mlp = ppdgm.evaluate.train_classifier(data.train[labelled], labels[labelled])
        logistic = LogisticRegression(max_iter=2000).fit(data.train[labelled].numpy(), labels[labelled].numpy())
        row = [accuracy(mlp, data.test, test_labels), logistic.score(data.test.numpy(), test_labels.numpy())]
        for alpha in alphas:
            m2 = SemiSupervisedVAE(64, 10, classification_weight=alpha)
            ppdgm.fit(m2.model, m2.guide, (data.train, y, labelled), "vae", epochs=100, lr=3e-3, seed=split)
            row.append(accuracy(m2.classify, data.test, test_labels))
        print(f"| {split} | " + " | ".join(f"{100 * a:.1f}%" for a in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, nargs="+", default=[2000, 4000])
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alphas", type=float, nargs="+", default=[4.0, 8.0, 16.0])
    args = parser.parse_args()
    conditional(args.seeds, args.steps)
    semi_supervised(args.splits, args.alphas)


if __name__ == "__main__":
    main()

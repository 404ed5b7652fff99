"""Importance-sampled log p(x) throughput: ``ppdgm.evaluate.log_likelihood`` against a hand-written evaluator.

The ``iwae-1layer`` networks (784-200-200-50, tanh), K importance samples per image, images in
batches of 100 and particles in chunks that keep about 2^24 pixel-sized numbers in memory at once
(the same chunking for both). The hand-written evaluator is what a PyTorch user would write: encode
once, draw a chunk of particles, decode, log-sum-exp, combine the chunks. Both are timed in turn on
the same images; the estimates are checked to agree (same networks; independent draws, so within
their Monte Carlo error). Prints images per second and the ratio of times.

    python bench/evaluate_is.py [--images 10000] [--num-samples 5000] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pyro
import torch
from torch.nn import functional as F

import ppdgm
from ppdgm.zoo import build

LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def hand_written(model, guide, data: torch.Tensor, k: int, batch_size: int, max_elements: int) -> torch.Tensor:
    decoder, encoder, z_dim, min_scale = model.decoder, guide.net, guide.z_dim, guide.min_scale
    out = []
    for x in data.split(batch_size):
        loc, raw = encoder(x).split(z_dim, -1)
        scale = F.softplus(raw) + min_scale
        chunk = max(1, min(k, max_elements // (x.shape[0] * x.shape[1])))
        running, done = None, 0
        while done < k:
            n = min(chunk, k - done)
            z = loc + scale * torch.randn((n, *loc.shape), device=x.device)
            log_q = (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)
            log_prior = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
            logits = decoder(z)
            log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
            lse = torch.logsumexp(log_prior + log_lik - log_q, 0)
            running = lse if running is None else torch.logaddexp(running, lse)
            done += n
        out.append(running - math.log(k))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    path = Path(args.data_dir) / "binarized_mnist.npz"
    if path.exists():
        data, source = ppdgm.data.load_binarized_mnist(args.data_dir, download=False).test, "binarized MNIST test"
    else:
        data = (torch.rand(args.images, 784, generator=torch.Generator().manual_seed(0)) < 0.13).float()
        source = "random binary images"
    data = data[: args.images].to(device)
    torch.manual_seed(0)
    model, guide = build("iwae-1layer", 784)
    model.to(device)
    guide.to(device)
    print(f"{source}: {data.shape[0]} images, K={args.num_samples}, device {device}", end="")
    print(
        f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {torch.get_num_threads()} threads"
    )
    times: dict[str, list[float]] = {"hand": [], "ppdgm": [], "ppdgm_eager": []}
    estimates = {}
    for _ in range(args.rounds):
        for name in times:
            pyro.clear_param_store()
            sync()
            tic = time.perf_counter()
            if name == "hand":
                estimates[name] = hand_written(model, guide, data, args.num_samples, args.batch_size, 1 << 24)
            else:
                estimates[name] = ppdgm.evaluate.log_likelihood(
                    model, guide, data, args.num_samples, batch_size=args.batch_size, compile=name == "ppdgm"
                ).values.to(device)
            sync()
            times[name].append(time.perf_counter() - tic)
    best = {name: min(t) for name, t in times.items()}
    print(f"{'evaluator':<12}{'seconds':>10}{'images/s':>12}{'mean log p(x)':>16}")
    for name, seconds in best.items():
        print(f"{name:<12}{seconds:>10.2f}{data.shape[0] / seconds:>12.1f}{estimates[name].mean().item():>16.3f}")
    print(f"ratio ppdgm / hand: {best['ppdgm'] / best['hand']:.3f} (best of {args.rounds} rounds each)")
    print(f"ratio ppdgm eager / hand: {best['ppdgm_eager'] / best['hand']:.3f} (compile=False)")
    gap = (estimates["hand"] - estimates["ppdgm"]).abs().mean().item()
    print(f"mean |difference| of the per-image estimates: {gap:.4f} nats")


if __name__ == "__main__":
    main()

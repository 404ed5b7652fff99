"""Per-step time of ppdgm's ``vae`` and ``iwae`` against a hand-written PyTorch loop.

Same networks (the ``iwae-1layer`` preset: 784-200-200-50, tanh), same estimator, same batch,
measured in the same process, interleaved in rounds so that drifts of the machine hit both alike.
Prints the median step time of each and their ratio.

    python bench/step_time.py [--data-dir ../shared/data] [--steps 60] [--rounds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import pyro
import torch
from torch.nn import functional as F

import ppdgm
from ppdgm.method import Engine
from ppdgm.presets import build
from ppdgm.programs import ProgramPair

LOG_2PI = math.log(2 * math.pi)


def _normal_log_prob(value, loc, scale):
    return (-0.5 * ((value - loc) / scale).pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)


class HandWritten:
    """The loop a PyTorch user would write for the same model, guide and estimator."""

    def __init__(self, model, guide, num_particles: int, lr: float = 1e-3) -> None:
        self.decoder, self.encoder, self.z_dim = model.decoder, guide.net, guide.z_dim
        self.min_scale = guide.min_scale
        self.k = num_particles
        params = list(self.decoder.parameters()) + list(self.encoder.parameters())
        self.optimizer = torch.optim.Adam(params, lr=lr)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        loc, raw = self.encoder(x).split(self.z_dim, -1)
        scale = F.softplus(raw) + self.min_scale
        z = loc + scale * torch.randn((self.k, *loc.shape), device=x.device)
        log_q = _normal_log_prob(z, loc, scale)
        log_prior = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
        logits = self.decoder(z)
        log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_w = log_prior + log_lik - log_q
        if self.k == 1:
            objective = log_w.mean()
        else:
            objective = (torch.logsumexp(log_w, 0) - math.log(self.k)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        (-objective).backward()
        self.optimizer.step()
        return objective.detach()


class HandWrittenDistributions(HandWritten):
    """The same loop written with ``torch.distributions`` objects, as many PyTorch users write it."""

    def step(self, x: torch.Tensor) -> torch.Tensor:
        loc, raw = self.encoder(x).split(self.z_dim, -1)
        q = torch.distributions.Normal(loc, F.softplus(raw) + self.min_scale)
        z = q.rsample((self.k,))
        prior = torch.distributions.Normal(torch.zeros_like(loc), torch.ones_like(loc))
        lik = torch.distributions.Bernoulli(logits=self.decoder(z))
        log_w = prior.log_prob(z).sum(-1) + lik.log_prob(x.expand_as(lik.logits)).sum(-1) - q.log_prob(z).sum(-1)
        objective = log_w.mean() if self.k == 1 else (torch.logsumexp(log_w, 0) - math.log(self.k)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        (-objective).backward()
        self.optimizer.step()
        return objective.detach()


class Ppdgm:
    """ppdgm's hot loop: exactly what ``ppdgm.fit`` runs per step (validation off after step one)."""

    def __init__(self, model, guide, method: str, x: torch.Tensor, **options) -> None:
        self.programs = ProgramPair(model, guide)
        structure = self.programs.inspect(x)
        self.method = ppdgm.get_method(method, **options)
        self.method.setup(self.programs)
        self.engine = Engine(
            self.programs, {"model": structure.model_param_names, "guide": structure.guide_param_names}, lr=1e-3
        )

    def step(self, x: torch.Tensor) -> torch.Tensor:
        with pyro.validation_enabled(False):
            return next(iter(self.method.step(self.engine, x).values()))


def _time_steps(step, batches, n: int, sync) -> list[float]:
    times = []
    for i in range(n):
        x = batches[i % len(batches)]
        sync()
        tic = time.perf_counter()
        step(x)
        sync()
        times.append(time.perf_counter() - tic)
    return times


def load_batches(data_dir: str | None, batch_size: int, device: torch.device, count: int = 20) -> list[torch.Tensor]:
    if data_dir and (Path(data_dir) / "binarized_mnist.npz").exists():
        x = ppdgm.data.load_binarized_mnist(data_dir, download=False).train[: batch_size * count]
        source = "binarized MNIST"
    else:
        x = (torch.rand(batch_size * count, 784, generator=torch.Generator().manual_seed(0)) < 0.13).float()
        source = "random binary data (no --data-dir)"
    print(f"data: {source}, batch {batch_size}, device {device}, torch threads {torch.get_num_threads()}")
    return [b.to(device) for b in x.split(batch_size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_dir = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data-dir", default=str(default_dir))
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per round and implementation")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches = load_batches(args.data_dir, args.batch_size, device)
    cases = [("vae", {}, 1), ("iwae", {"num_particles": 5}, 5), ("iwae", {"num_particles": 50}, 50)]
    rows = []
    for method, options, k in cases:
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide = build("iwae-1layer", 784)
        model.to(device)
        guide.to(device)
        ours = Ppdgm(model, guide, method, batches[0], **options)
        contenders = {
            "hand": HandWritten(model, guide, k).step,
            "hand_dist": HandWrittenDistributions(model, guide, k).step,
            "ppdgm": ours.step,
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, step in contenders.items():
                _time_steps(step, batches, args.warmup, sync)
                times[name] += _time_steps(step, batches, args.steps, sync)
        med = {name: statistics.median(t) for name, t in times.items()}
        label = method + (f" K={k}" if method == "iwae" else "")
        rows.append((label, med, len(times["ppdgm"])))
    print()
    print(
        "| method | hand-written ms/step | hand-written (torch.distributions) ms/step | ppdgm ms/step "
        "| ratio ppdgm / hand-written | ratio ppdgm / hand (distributions) | steps timed each |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, med, n in rows:
        h, hd, o = med["hand"], med["hand_dist"], med["ppdgm"]
        print(f"| {label} | {1e3 * h:.2f} | {1e3 * hd:.2f} | {1e3 * o:.2f} | {o / h:.3f} | {o / hd:.3f} | {n} |")


if __name__ == "__main__":
    main()

"""Per-step time of ppdgm's methods against hand-written PyTorch loops.

``vae`` and ``iwae`` on the ``iwae-1layer`` networks (784-200-200-50, tanh); ``ws`` and ``rws`` on a
784-200 sigmoid belief net with linear recognition; ``gan`` on an MLP generator 64-256-256-784 and
an MLP discriminator 784-256-256-1 at batch 64 (``--gan-batch-sizes``). Same networks, same estimator, same batch,
measured in the same process, the implementations stepped in turn so that drifts of the machine
hit all alike. Prints the median step time of each, their ratio, and the spread of the ratio over
rounds.

    python bench/step_time.py [--data-dir DIR] [--steps 60] [--rounds 3] [--device cpu]
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
from ppdgm.compile.step import CompiledStep
from ppdgm.methods.engine import Engine
from ppdgm.programs.pair import ProgramPair
from ppdgm.zoo import build

LOG_2PI = math.log(2 * math.pi)


def _normal_log_prob(value, loc, scale):
    return (-0.5 * ((value - loc) / scale).pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)


class HandWritten:
    """The loop a PyTorch user would write for the same model, guide and estimator."""

    def __init__(self, model, guide, num_particles: int, lr: float = 1e-3, fused: bool = False) -> None:
        self.decoder, self.encoder, self.z_dim = model.decoder, guide.net, guide.z_dim
        self.min_scale = guide.min_scale
        self.k = num_particles
        params = list(self.decoder.parameters()) + list(self.encoder.parameters())
        # Adam's defaults, or its fused kernels (the best eager loop a user can write)
        self.optimizer = torch.optim.Adam(params, lr=lr, fused=True) if fused else torch.optim.Adam(params, lr=lr)

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


def _bernoulli_log_prob(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    logits, value = torch.broadcast_tensors(logits, value)
    return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)


class HandWrittenSBN:
    """Wake-sleep / reweighted wake-sleep for a one-layer SBN and its linear recognition net, by hand."""

    def __init__(
        self, model, guide, method: str, num_particles: int = 1, sleep_fraction: float = 0.5, fused: bool = False
    ) -> None:
        self.top, self.gen, self.rec = model.top_logits, model.generative[0], guide.recognition[0]
        self.method, self.k, self.s = method, num_particles, sleep_fraction
        kernels = {"fused": True} if fused else {}
        self.opt_model = torch.optim.Adam([self.top, *self.gen.parameters()], lr=1e-3, **kernels)
        self.opt_guide = torch.optim.Adam(list(self.rec.parameters()), lr=1e-3, **kernels)

    def _log_p(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _bernoulli_log_prob(self.top.expand_as(h), h) + _bernoulli_log_prob(self.gen(h), x)

    def _dream(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            h = torch.bernoulli(torch.sigmoid(self.top).expand(n, -1))
            return h, torch.bernoulli(torch.sigmoid(self.gen(h)))

    def step(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "ws":
            with torch.no_grad():
                h = torch.bernoulli(torch.sigmoid(self.rec(x)))
            wake = self._log_p(h, x).mean()
            self.opt_model.zero_grad(set_to_none=True)
            (-wake).backward()
            self.opt_model.step()
            h_d, x_d = self._dream(x.shape[0])
            sleep = _bernoulli_log_prob(self.rec(x_d), h_d).mean()
            self.opt_guide.zero_grad(set_to_none=True)
            (-sleep).backward()
            self.opt_guide.step()
            return wake.detach()
        logits = self.rec(x)
        h = torch.bernoulli(torch.sigmoid(logits).expand(self.k, *logits.shape))
        log_q = _bernoulli_log_prob(logits, h)
        log_p = self._log_p(h, x)
        weights = torch.softmax((log_p - log_q).detach(), 0)
        surrogate = (weights * log_p).sum(0).mean() + (1 - self.s) * (weights * log_q).sum(0).mean()
        h_d, x_d = self._dream(x.shape[0])
        surrogate = surrogate + self.s * _bernoulli_log_prob(self.rec(x_d), h_d).mean()
        self.opt_model.zero_grad(set_to_none=True)
        self.opt_guide.zero_grad(set_to_none=True)
        (-surrogate).backward()
        self.opt_model.step()
        self.opt_guide.step()
        return surrogate.detach()


class HandWrittenGAN:
    """A non-saturating GAN step by hand: one generator pass, D on [real; fake.detach()], then G on D(fake).

    ``strict=True`` back-propagates the generator loss into the generator's parameters only (as
    ppdgm's engine does); ``strict=False`` is the common idiom that also fills the discriminator's
    gradients (the DCGAN example of PyTorch).
    """

    def __init__(self, generator, discriminator, z_dim: int, strict: bool = True, fused: bool = False) -> None:
        self.g, self.d, self.z_dim, self.strict = generator, discriminator, z_dim, strict
        kernels = {"fused": True} if fused else {"foreach": True}
        self.opt_g = torch.optim.Adam(list(generator.parameters()), lr=1e-3, **kernels)
        self.opt_d = torch.optim.Adam(list(discriminator.parameters()), lr=1e-3, **kernels)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        fake = self.g(torch.randn(n, self.z_dim, device=x.device))
        labels = torch.cat([torch.ones(n, device=x.device), torch.zeros(n, device=x.device)])
        d_loss = F.binary_cross_entropy_with_logits(self.d(torch.cat([x, fake.detach()])).squeeze(-1), labels)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(self.d(fake).squeeze(-1), labels[:n])
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward(inputs=list(self.g.parameters()) if self.strict else None)
        self.opt_g.step()
        return d_loss.detach()


class Ppdgm:
    """ppdgm's hot loop: exactly what ``ppdgm.fit`` runs per step (validation off after step one).

    ``compile="auto"`` (fit's default) replays the step's recording (ppdgm.compile.step); ``False`` runs the eager step.
    """

    def __init__(self, model, guide, method: str, x: torch.Tensor, compile: bool | str = "auto", **options) -> None:
        self.programs = ProgramPair(model, guide)
        structure = self.programs.inspect(x)
        self.method = ppdgm.get_method(method, **options)
        self.method.setup(self.programs)
        players = {"model": structure.model_param_names, "guide": structure.guide_param_names}
        self.engine = Engine(self.programs, {**players, **self.method.extra_players()}, lr=1e-3)
        self.compiled = CompiledStep(self.method, self.engine, compile)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        with pyro.validation_enabled(False):
            return next(iter(self.compiled(x).values()))


def _time_interleaved(contenders: dict, batches: list[torch.Tensor], args: argparse.Namespace, sync) -> tuple:
    """Median step time per contender, stepping them in turn so that machine drift hits all alike.

    Returns the medians over all timed steps and, per round, the ratio of each contender's median
    to the first contender's (the reference), to show the spread.
    """
    names = list(contenders)
    for i in range(args.warmup):
        for name in names:
            contenders[name](batches[i % len(batches)])
    times: dict[str, list[float]] = {name: [] for name in names}
    round_ratios: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        this_round: dict[str, list[float]] = {name: [] for name in names}
        for i in range(args.steps):
            x = batches[i % len(batches)]
            for name in names:
                sync()
                tic = time.perf_counter()
                contenders[name](x)
                sync()
                this_round[name].append(time.perf_counter() - tic)
        reference = statistics.median(this_round[names[0]])
        for name in names:
            times[name] += this_round[name]
            round_ratios[name].append(statistics.median(this_round[name]) / reference)
    return {name: statistics.median(t) for name, t in times.items()}, round_ratios


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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--suite", choices=["all", "vae", "sbn", "gan", "fit"], default="all")
    parser.add_argument("--fit-rows", type=int, default=10000, help="rows of the end-to-end (fit) rows")
    parser.add_argument("--fit-epochs", type=int, default=3, help="epochs a round of the end-to-end rows")
    parser.add_argument("--gan-batch-sizes", type=int, nargs="+", default=[64], help="batch sizes of the GAN rows")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches = load_batches(args.data_dir, args.batch_size, device)
    cases = [("vae", {}, 1), ("iwae", {"num_particles": 5}, 5), ("iwae", {"num_particles": 50}, 50)]
    if args.suite not in ("all", "vae"):
        cases = []
    rows = []
    for method, options, k in cases:
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide = build("iwae-1layer", 784)
        model.to(device)
        guide.to(device)
        contenders = {
            "hand": HandWritten(model, guide, k).step,
            "hand_dist": HandWrittenDistributions(model, guide, k).step,
            **_ours(model, guide, method, batches[0], **options),
        }
        label = method + (f" K={k}" if method == "iwae" else "")
        rows.append((label, *_time_interleaved(contenders, batches, args, sync)))
    if rows:
        _print_table(
            "VAE / IWAE, iwae-1layer networks (784-200-200-50 tanh):",
            rows,
            {"hand": "hand-written", "hand_dist": "hand-written (torch.distributions)"},
            args,
        )
    if args.suite in ("all", "sbn"):
        _sbn_table(args, batches, sync)
    if args.suite in ("all", "gan"):
        _gan_table(args, sync)
    if args.suite in ("all", "fit"):
        _fit_table(args)


def _ours(model, guide, method: str, x: torch.Tensor, **options) -> dict:
    """ppdgm's compiled step (fit's default) and its eager step, each with its own optimizers."""
    compiled = Ppdgm(model, guide, method, x, **options)
    eager = Ppdgm(model, guide, method, x, compile=False, **options)
    return {"ppdgm": compiled.step, "ppdgm_eager": eager.step}


def _print_table(title: str, rows: list, references: dict[str, str], args: argparse.Namespace) -> None:
    """One markdown table: each reference's and ppdgm's (compiled, eager) ms/step, ratios to the first reference."""
    first = next(iter(references))
    print()
    print(title)
    header = ["method", *(f"{name} ms/step" for name in references.values()), "ppdgm ms/step", "ppdgm eager ms/step"]
    header += [f"ratio ppdgm / {references[first]} (rounds: min-max)", "ratio ppdgm eager / " + references[first]]
    header += [f"ratio ppdgm / {name}" for name in list(references.values())[1:]] + ["steps timed each"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, med, spread in rows:
        h, o, e = med[first], med["ppdgm"], med["ppdgm_eager"]
        span = f"{min(spread['ppdgm']):.3f}-{max(spread['ppdgm']):.3f}"
        cells = [label, *(f"{1e3 * med[name]:.2f}" for name in references), f"{1e3 * o:.2f}", f"{1e3 * e:.2f}"]
        cells += [f"{o / h:.3f} ({span})", f"{e / h:.3f}"]
        cells += [f"{o / med[name]:.3f}" for name in list(references)[1:]] + [str(args.rounds * args.steps)]
        print("| " + " | ".join(cells) + " |")


def _gan_table(args: argparse.Namespace, sync) -> None:
    from ppdgm.guides import MLPDiscriminator
    from ppdgm.models import MLPGenerator

    rows = []
    for batch_size in args.gan_batch_sizes:
        x = load_batches(args.data_dir, batch_size, torch.device(args.device))
        pyro.clear_param_store()
        torch.manual_seed(0)
        device = x[0].device
        gen = MLPGenerator(784, z_dim=64, hidden=(256, 256), activation="relu", output="sigmoid").to(device)
        disc = MLPDiscriminator(784, (256, 256)).to(device)
        contenders = {
            "hand": HandWrittenGAN(gen.net, disc.net, 64, strict=True).step,
            "hand_idiom": HandWrittenGAN(gen.net, disc.net, 64, strict=False).step,
            **_ours(gen, None, "gan", x[0], discriminator=disc),
        }
        rows.append((f"gan, batch {batch_size}", *_time_interleaved(contenders, x, args, sync)))
    _print_table(
        "GAN, MLP generator 64-256-256-784 and discriminator 784-256-256-1:",
        rows,
        {"hand": "hand-written", "hand_idiom": "hand-written (plain backward)"},
        args,
    )


def _sbn_table(args: argparse.Namespace, batches: list[torch.Tensor], sync) -> None:
    rows = []
    for method, options in (("ws", {}), ("rws", {"num_particles": 5})):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide = build("helmholtz", 784, layers=(200,))
        model.to(batches[0].device)
        guide.to(batches[0].device)
        contenders = {
            "hand": HandWrittenSBN(model, guide, method, options.get("num_particles", 1)).step,
            **_ours(model, guide, method, batches[0], **options),
        }
        label = method + "".join(f" K={v}" for v in options.values())
        rows.append((label, *_time_interleaved(contenders, batches, args, sync)))
    _print_table(
        "Wake-sleep family, helmholtz preset with layers 200 (784-200 SBN, linear recognition):",
        rows,
        {"hand": "hand-written"},
        args,
    )


def _fit_table(args: argparse.Namespace) -> None:
    """End to end: ``ppdgm.fit`` against a hand-written loop over the same rows (shuffled batches included).

    Each round runs both for ``--fit-epochs`` epochs of ``--fit-rows`` rows; the steady state is the epochs after
    the first (which holds ppdgm's inspection, checked first step and recording), reported per 100 steps.
    """
    device = torch.device(args.device)
    x = torch.cat(load_batches(args.data_dir, args.batch_size, device, count=args.fit_rows // args.batch_size))
    rows = []
    for method, options, k in (("vae", {}, 1), ("iwae", {"num_particles": 5}, 5)):
        per_100: dict[str, list[float]] = {"hand": [], "hand_fused": [], "ppdgm": [], "ppdgm_eager": []}
        first: dict[str, list[float]] = {"ppdgm": [], "ppdgm_eager": []}
        for _ in range(args.rounds):
            for name in per_100:
                pyro.clear_param_store()
                torch.manual_seed(0)
                model, guide = build("iwae-1layer", 784)
                model.to(device)
                guide.to(device)
                if name.startswith("hand"):
                    epochs = _hand_fit(HandWritten(model, guide, k, fused=name == "hand_fused"), x, args)
                else:
                    run = ppdgm.fit(
                        model, guide, x, method, epochs=args.fit_epochs, batch_size=args.batch_size,
                        device=args.device, progress=False, validate_every=0, compile=name == "ppdgm", **options,
                    )  # fmt: skip
                    epochs = [record["seconds"] for record in run.history]
                    first[name].append(epochs[0])
                steps = len(x) // args.batch_size
                per_100[name] += [100 * t / steps for t in epochs[1:]]
        med = {name: statistics.median(t) for name, t in per_100.items()}
        rows.append((method + (f" K={k}" if k > 1 else ""), med, {n: statistics.median(t) for n, t in first.items()}))
    print()
    print(
        f"End to end: ppdgm.fit against a hand-written loop over the same {len(x)} rows, batch {args.batch_size}, "
        f"{args.fit_epochs} epochs a round, {args.rounds} rounds (steady state: epochs after the first):"
    )
    print(
        "| method | hand-written s/100 steps | hand-written, fused Adam | ppdgm.fit s/100 steps | ppdgm.fit eager "
        "| ppdgm.fit / hand-written | ppdgm.fit / fused hand-written | eager / hand-written "
        "| ppdgm first epoch s (compiled, eager) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, med, first_epoch in rows:
        h, f, o, e = med["hand"], med["hand_fused"], med["ppdgm"], med["ppdgm_eager"]
        print(
            f"| {label} | {h:.3f} | {f:.3f} | {o:.3f} | {e:.3f} | {o / h:.3f} | {o / f:.3f} | {e / h:.3f} "
            f"| {first_epoch['ppdgm']:.2f}, {first_epoch['ppdgm_eager']:.2f} |"
        )


def _hand_fit(hand: HandWritten, x: torch.Tensor, args: argparse.Namespace) -> list[float]:
    """Seconds per epoch of the hand-written loop: a seeded permutation per epoch, then its batches."""
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for _ in range(args.fit_epochs):
        tic = time.perf_counter()
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for rows in order.split(args.batch_size):
            hand.step(x[rows])
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - tic)
    return seconds


if __name__ == "__main__":
    main()

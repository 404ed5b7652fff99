"""Data-parallel scaling on CPU: the same fit in 1 process and in N gloo processes (one thread each).

``iwae`` (K=5) on the ``iwae-1layer`` networks (784-200-200-50), global batch 100, binarized MNIST
(or random binary images without the data). Each configuration trains the same number of steps;
the table gives training seconds (``run.seconds``, data and validation excluded), steps per second,
the speed-up over one single-threaded process, and the largest parameter difference from the
single-process run (the runs are equivalent, so it should be float noise). A 1-process run with N
threads is the fair alternative on one machine and is shown too.

    python bench/ddp_scaling.py [--procs 2] [--steps 200] [--method iwae]
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import tempfile
from pathlib import Path

import pyro
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

import ppdgm
from ppdgm.zoo import build


def _data(data_dir: str, rows: int) -> ppdgm.data.Dataset:
    if (Path(data_dir) / "binarized_mnist.npz").exists():
        data = ppdgm.data.load_binarized_mnist(data_dir, download=False)
    else:
        x = (torch.rand(rows + 200, 784, generator=torch.Generator().manual_seed(0)) < 0.13).float()
        data = ppdgm.data.Dataset("random", x[:rows], x[rows:], x[rows:])
    return dataclasses.replace(data, train=data.train[:rows], valid=data.valid[:0])


def _fit(args: argparse.Namespace) -> tuple[float, dict]:
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = build("iwae-1layer", 784)
    options = {"num_particles": args.k} if args.method in ("iwae", "rws") else {}
    run = ppdgm.fit(
        model, guide, _data(args.data_dir, args.rows), args.method, steps=args.steps, batch_size=args.batch_size,
        seed=0, progress=False, validate_every=0, **options,
    )  # fmt: skip
    params = {n: p.detach().clone() for pl in run.engine.players.values() for n, p in zip(pl.param_names, pl.params)}
    return run.seconds, params


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        seconds, params = _fit(args)
        if rank == 0:
            torch.save({"seconds": seconds, "params": params}, Path(out) / "ranks.pt")
    finally:
        torch_dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--method", default="iwae")
    parser.add_argument("-k", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.method} on iwae-1layer, global batch {args.batch_size}, {args.steps} steps, CPU")
    rows = []
    torch.set_num_threads(1)
    base, reference = _fit(args)
    rows.append(("1 process, 1 thread", base, 0.0))
    torch.set_num_threads(args.procs)
    seconds, params = _fit(args)
    rows.append((f"1 process, {args.procs} threads", seconds, _gap(params, reference)))
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(args.procs, _free_port(), args, out), nprocs=args.procs, join=True)
        result = torch.load(Path(out) / "ranks.pt", weights_only=False)
    rows.append((f"{args.procs} gloo processes, 1 thread each", result["seconds"], _gap(result["params"], reference)))
    print("| configuration | seconds | steps/s | speed-up | max parameter difference from 1 process |")
    print("|---|---|---|---|---|")
    for label, seconds, gap in rows:
        print(f"| {label} | {seconds:.2f} | {args.steps / seconds:.1f} | {base / seconds:.2f} | {gap:.1e} |")


def _gap(params: dict, reference: dict) -> float:
    return max((params[n] - v).abs().max().item() for n, v in reference.items())


if __name__ == "__main__":
    main()

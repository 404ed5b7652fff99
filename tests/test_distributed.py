"""Data-parallel training: two gloo processes at half the batch each equal one process at the whole batch."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

import ppdgm
from ppdgm.data.dataset import Dataset
from ppdgm.data.named import load_digits
from ppdgm.runtime.distributed import ShardedSampling, block
from ppdgm.zoo import build

ROWS, BATCH, STEPS = 130, 25, 8  # batches of 25 split 13/12 over two ranks, the epoch's last batch of 5 split 3/2

CASES = {  # case: (method, model, method options)
    "vae": ("vae", "vae-mlp", {}),
    "iwae": ("iwae", "vae-mlp", {"num_particles": 3}),
    "rws": ("rws", "sbn", {"num_particles": 3}),
    "gan": ("gan", "gan-image", {}),
    "vae-global-latent": ("vae", "global", {"num_particles": 3}),
    "vae-dataset-binarized": ("vae", "vae-mlp", {"transform": "binarize"}),  # a torch Dataset, read per rank
}


class GlobalBiasModel(nn.Module):
    """A VAE decoder whose logits share a global latent bias (a site outside the data plate)."""

    def __init__(self, x_dim: int = 64, z_dim: int = 3) -> None:
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.decoder = nn.Linear(z_dim, x_dim)

    def forward(self, x=None, batch_size=None):
        pyro.module("global_model", self)
        n = x.shape[0] if x is not None else batch_size
        bias = pyro.sample("bias", dist.Normal(torch.zeros(self.x_dim), 1.0).to_event(1))
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(torch.zeros(n, self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z) + bias.unsqueeze(-2)).to_event(1), obs=x)


class GlobalBiasGuide(nn.Module):
    def __init__(self, x_dim: int = 64, z_dim: int = 3) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.encoder = nn.Linear(x_dim, 2 * z_dim)
        self.bias_loc = nn.Parameter(torch.zeros(x_dim))

    def forward(self, x=None, batch_size=None):
        pyro.module("global_guide", self)
        pyro.sample("bias", dist.Normal(self.bias_loc, 0.1).to_event(1))
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.encoder(x).split(self.z_dim, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def _small_digits() -> Dataset:
    data = load_digits(binary=True)
    return dataclasses.replace(
        data, train=data.train[:ROWS].double(), valid=data.valid[:37].double(), test=data.test[:10].double()
    )


def _pair(preset: str, x_dim: int):
    if preset == "global":
        return GlobalBiasModel(x_dim), GlobalBiasGuide(x_dim)
    if preset == "sbn":
        return build(preset, x_dim, layers=(6,))
    return build(preset, x_dim, hidden=(16,), z_dim=4)


def _train(case: str, checkpoint_dir: str | None = None, steps: int = STEPS) -> tuple[dict, list]:
    """The trained parameters and the history (its last record holds the step path, for the test's checks)."""
    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    data = _small_digits()
    method, preset, options = CASES[case]
    if case.endswith("-dataset-binarized"):  # grey rows from a torch Dataset, binarized afresh every epoch
        grey = load_digits().train[:ROWS].double()
        data = dataclasses.replace(
            data, train=TensorDataset(grey), valid=TensorDataset(load_digits().valid[:37].double())
        )
    torch.manual_seed(1)
    model, guide = _pair(preset, data.dim)
    run = ppdgm.fit(
        model,
        guide,
        data,
        method,
        steps=steps,
        batch_size=BATCH,
        seed=3,
        progress=False,
        checkpoint_dir=checkpoint_dir,
        **options,
    )
    params = {
        n: p.detach().clone()
        for player in run.engine.players.values()
        for n, p in zip(player.param_names, player.params)
    }
    return params, [*run.history[:-1], {**run.history[-1], "step_path": run.config["step_path"]["path"]}]


def _worker(
    rank: int, world_size: int, port: int, case: str, out: str, checkpoint_dir: str | None = None, steps: int = STEPS
) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        params, history = _train(case, checkpoint_dir, steps)
        torch.save({"params": params, "history": history}, Path(out) / f"rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()
    # The results are saved and the group is gone. Now and then (about 1 in 40 runs, more under load) the
    # interpreter's own teardown aborts in native code ("terminate called without an active exception", no Python
    # frame left); leaving without that teardown keeps a finished worker's exit status its own.
    os._exit(0)


def _run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_process_at_the_global_batch(case, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), case, str(tmp_path)), nprocs=2, join=True)
    single, single_history = _train(case)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for name, value in single.items():
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name  # the ranks agree exactly
        torch.testing.assert_close(ranks[0]["params"][name], value, rtol=1e-9, atol=1e-9, msg=name)
    moved = max((single[n] - v).abs().max().item() for n, v in _initial(case).items())
    assert moved > 1e-3  # the comparison is not between untrained parameters
    assert [r["history"][-1]["step_path"] for r in ranks] == ["compiled", "compiled"]  # each rank's recordings
    for key, value in single_history[-1].items():
        if key.startswith(("train_", "valid_")):
            assert ranks[0]["history"][-1][key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def _initial(case: str) -> dict:
    params, _ = _train(case, steps=1)
    return params


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path):
    """Epoch 1 on two ranks, epoch 2 resumed in one process = two epochs in one process (the random streams agree)."""
    per_epoch = -(-ROWS // BATCH)
    checkpoint = str(tmp_path / "ckpt")
    mp.spawn(_worker, args=(2, _free_port(), "iwae", str(tmp_path), checkpoint, per_epoch), nprocs=2, join=True)
    resumed, history = _train("iwae", checkpoint, 2 * per_epoch)
    assert [r["epoch"] for r in history] == [1, 2]
    single, _ = _train("iwae", None, 2 * per_epoch)
    for name, value in single.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-9, atol=1e-9, msg=name)


def test_sharded_sampling_draws_the_single_process_rows():
    """Each block of a site drawn under ShardedSampling equals those rows of one global draw."""
    loc = torch.randn(3, 10, 4)  # particles x rows x event
    scale = torch.rand(3, 10, 4) + 0.5
    probs = torch.rand(3, 10, 4)

    def program(rows):
        with pyro.plate("particles", 3, dim=-2), pyro.plate("data", rows.stop - rows.start, dim=-1):
            z = pyro.sample("z", dist.Normal(loc[:, rows], scale[:, rows]).to_event(1))
            b = pyro.sample("b", dist.Bernoulli(probs[:, rows]).to_event(1))
        return z, b

    pyro.set_rng_seed(5)
    whole = program(slice(0, 10))
    sharding = ShardedSampling("data")
    for rank in range(3):
        offset, size = block(10, rank, 3)
        pyro.set_rng_seed(5)
        with sharding.rows(offset, size, 10):
            part = program(slice(offset, offset + size))
        for w, p in zip(whole, part):
            assert torch.equal(w[:, offset : offset + size], p)


def test_sharded_sampling_refuses_a_distribution_it_cannot_widen():
    base = dist.Normal(torch.zeros(4), 1.0)
    transformed = dist.TransformedDistribution(base, [dist.transforms.ExpTransform()])
    sharding = ShardedSampling("data")
    with pytest.raises(NotImplementedError, match="site 'w'"), sharding.rows(0, 4, 8):
        with pyro.plate("data", 4):
            pyro.sample("w", transformed)


def test_a_killed_rank_stops_the_job_and_a_restart_resumes(tmp_path):
    """torchrun: kill rank 1 after the first checkpoint, the job fails loudly, a rerun finishes from the checkpoint."""
    script = tmp_path / "job.py"
    script.write_text(_JOB)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script)]
    killed = _run([*cmd, str(tmp_path / "run"), "kill"], env)
    assert killed.returncode != 0
    assert "rank 1 killed" in killed.stderr or "rank 1 killed" in killed.stdout
    assert "ChildFailedError" in killed.stderr or "failed" in killed.stderr.lower()
    resumed = _run([*cmd, str(tmp_path / "run"), "resume"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from epoch 2" in resumed.stdout
    whole = _run([*cmd, str(tmp_path / "uninterrupted"), "resume"], env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    a = torch.load(tmp_path / "run" / "final.pt", weights_only=False)
    b = torch.load(tmp_path / "uninterrupted" / "final.pt", weights_only=False)
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


_JOB = """
import os, sys, signal
import torch
import ppdgm
from ppdgm.data import load_digits
from ppdgm.runtime.distributed import exit_job
from ppdgm.zoo import build

out, mode = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
data = load_digits(binary=True)
torch.manual_seed(0)
model, guide = build("vae-mlp", data.dim, hidden=(16,), z_dim=4)
rank = int(os.environ["RANK"])

def kill_after_two(run, record):
    if mode == "kill" and rank == 1 and record["epoch"] == 2:
        print("rank 1 killed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

done_before = 0
if os.path.exists(os.path.join(out, "checkpoint.pt")):
    done_before = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["epoch"]
    if rank == 0:
        print(f"resumed from epoch {done_before}", flush=True)
run = ppdgm.fit(model, guide, data, "vae", epochs=4, batch_size=200, seed=1, progress=False,
                checkpoint_dir=out, callbacks=[kill_after_two])
if rank == 0:
    torch.save({n: p.detach() for pl in run.engine.players.values() for n, p in zip(pl.param_names, pl.params)},
               os.path.join(out, "final.pt"))
exit_job(0)  # as docs/scaling.md advises: the interpreter's teardown aborts now and then in native code
"""


def _cli_params(out: Path) -> dict:
    players = torch.load(out / "params.pt", weights_only=False)["players"]
    return {f"{p}/{n}": v for p, named in players.items() for n, v in named.items()}


def test_torchrun_cli_equals_the_single_process_cli(tmp_path):
    """`torchrun -m ppdgm train` (2 ranks, batch 100 split 50/50) ends where `ppdgm train` does; rank 0 writes."""
    args = ["train", "--steps", "30", "--batch-size", "100", "--hidden", "32", "--z-dim", "4", "--quiet", "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "ppdgm"]
    two = _run([*launcher, *args, str(tmp_path / "two")], env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("trained vae for 30 steps") == 1  # one report, from rank 0
    one = _run([sys.executable, "-m", "ppdgm", *args, str(tmp_path / "one")], env)
    assert one.returncode == 0, one.stderr[-3000:]
    assert '"world_size": 2' in (tmp_path / "two" / "config.json").read_text()
    a, b = _cli_params(tmp_path / "two"), _cli_params(tmp_path / "one")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_comparison_with_two_processes_per_run_matches_one_process(tmp_path):
    """`nproc_per_run = 2` trains each run under torchrun; the table equals the single-process one."""
    from ppdgm.compare import compare

    from .test_compare import tiny_spec

    metrics = ("log_likelihood", "elbo")
    spec = {**tiny_spec(tmp_path / "one", metrics), "seeds": [0]}
    one = compare(spec, progress=False)
    two = compare({**spec, "output": str(tmp_path / "two"), "nproc_per_run": 2}, progress=False)
    assert (tmp_path / "two" / "runs" / "vae-seed0" / "torchrun.log").exists()
    for row_one, row_two in zip(one["rows"], two["rows"]):
        for metric in metrics:
            assert row_two[metric]["mean"] == pytest.approx(row_one[metric]["mean"], rel=1e-4), metric

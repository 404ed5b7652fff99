"""A deep Markov model in the shape of Pyro's ``examples/dmm``: sequences of different lengths sorted, masked and
packed before each step, an RNN guide over the reversed ``PackedSequence``, ``pyro.markov`` over time steps, KL
annealing by ``poutine.scale`` with a factor passed beside the batch, one ``pyro.module`` in both programs.

ppdgm takes the data as rows (sequences and their lengths) and builds the programs' arguments with the same function
Pyro's training loop calls (``fit(arguments=...)``); the programs are unchanged.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO
from torch import nn

import ppdgm
from ppdgm.compile.failures import CompileWarning
from ppdgm.programs.sites import ConventionError

from .harness import assert_same_objective

DATA_DIM, Z_DIM, RNN_DIM = 5, 3, 8


def reverse_sequences(mini_batch, seq_lengths):
    reversed_mini_batch = torch.zeros_like(mini_batch)
    for b in range(mini_batch.size(0)):
        T = int(seq_lengths[b])
        time_slice = torch.arange(T - 1, -1, -1, device=mini_batch.device)
        reversed_mini_batch[b, 0:T, :] = torch.index_select(mini_batch[b, :, :], 0, time_slice)
    return reversed_mini_batch


def pad_and_reverse(rnn_output, seq_lengths):
    rnn_output, _ = nn.utils.rnn.pad_packed_sequence(rnn_output, batch_first=True)
    return reverse_sequences(rnn_output, seq_lengths)


def get_mini_batch_mask(mini_batch, seq_lengths):
    mask = mini_batch.new_zeros(mini_batch.shape[0:2])
    for b in range(mini_batch.shape[0]):
        mask[b, 0 : int(seq_lengths[b])] = 1.0
    return mask


def get_mini_batch(sequences, seq_lengths):
    """Pyro's ``polyphonic_data_loader.get_mini_batch`` on a batch's rows: sorted by length, cut to the longest,
    reversed and packed for the guide's RNN, with the mask of the steps each sequence has."""
    sorted_seq_lengths, sorted_idx = torch.sort(seq_lengths, descending=True)
    T_max = int(sorted_seq_lengths[0])
    mini_batch = sequences[sorted_idx, 0:T_max, :]
    reversed_mini_batch = reverse_sequences(mini_batch, sorted_seq_lengths)
    mask = get_mini_batch_mask(mini_batch, sorted_seq_lengths)
    packed = nn.utils.rnn.pack_padded_sequence(reversed_mini_batch, sorted_seq_lengths.cpu(), batch_first=True)
    return mini_batch, packed, mask, sorted_seq_lengths


class GatedTransition(nn.Module):
    def __init__(self, z_dim, transition_dim):
        super().__init__()
        self.lin_gate_z_to_hidden = nn.Linear(z_dim, transition_dim)
        self.lin_gate_hidden_to_z = nn.Linear(transition_dim, z_dim)
        self.lin_z_to_loc = nn.Linear(z_dim, z_dim)
        self.lin_sig = nn.Linear(z_dim, z_dim)

    def forward(self, z_t_1):
        gate = torch.sigmoid(self.lin_gate_hidden_to_z(torch.relu(self.lin_gate_z_to_hidden(z_t_1))))
        loc = (1 - gate) * z_t_1 + gate * self.lin_z_to_loc(z_t_1)
        return loc, nn.functional.softplus(self.lin_sig(torch.relu(loc))) + 1e-3


class Combiner(nn.Module):
    def __init__(self, z_dim, rnn_dim):
        super().__init__()
        self.lin_z_to_hidden = nn.Linear(z_dim, rnn_dim)
        self.lin_hidden_to_loc = nn.Linear(rnn_dim, z_dim)
        self.lin_hidden_to_scale = nn.Linear(rnn_dim, z_dim)

    def forward(self, z_t_1, h_rnn):
        h_combined = 0.5 * (torch.tanh(self.lin_z_to_hidden(z_t_1)) + h_rnn)
        return self.lin_hidden_to_loc(h_combined), nn.functional.softplus(self.lin_hidden_to_scale(h_combined))


class DMM(nn.Module):
    """Pyro's DMM (Krishnan et al. 2017) at toy sizes, its model and guide as the example writes them."""

    def __init__(self, input_dim=DATA_DIM, z_dim=Z_DIM, rnn_dim=RNN_DIM, split=False):
        super().__init__()
        self.split = split
        self.emitter = nn.Linear(z_dim, input_dim)
        self.trans = GatedTransition(z_dim, 6)
        self.combiner = Combiner(z_dim, rnn_dim)
        self.rnn = nn.RNN(input_size=input_dim, hidden_size=rnn_dim, nonlinearity="relu", batch_first=True)
        self.z_0 = nn.Parameter(torch.zeros(z_dim))
        self.z_q_0 = nn.Parameter(torch.zeros(z_dim))
        self.h_0 = nn.Parameter(torch.zeros(1, 1, rnn_dim))

    def registered(self, program):
        """The example's one module in both programs; with ``split`` each program registers its own parts (the sleep
        phases step the model and the guide as separate players, each owning its parameters)."""
        if not self.split:
            return "dmm", self
        parts = nn.Module()
        names = ("emitter", "trans", "z_0") if program == "model" else ("combiner", "rnn", "z_q_0", "h_0")
        for name in names:
            setattr(parts, name, getattr(self, name))
        return f"dmm_{program}", parts

    def model(self, mini_batch, mini_batch_reversed, mini_batch_mask, mini_batch_seq_lengths, annealing_factor=1.0):
        T_max = mini_batch.size(1)
        pyro.module(*self.registered("model"))
        z_prev = self.z_0.expand(mini_batch.size(0), self.z_0.size(0))
        with pyro.plate("z_minibatch", len(mini_batch)):
            for t in pyro.markov(range(1, T_max + 1)):
                z_loc, z_scale = self.trans(z_prev)
                with poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample(
                        f"z_{t}",
                        dist.Normal(z_loc, z_scale).mask(mini_batch_mask[:, t - 1 : t]).to_event(1),
                    )
                emission_probs_t = torch.sigmoid(self.emitter(z_t))
                pyro.sample(
                    f"obs_x_{t}",
                    dist.Bernoulli(emission_probs_t).mask(mini_batch_mask[:, t - 1 : t]).to_event(1),
                    obs=mini_batch[:, t - 1, :],
                )
                z_prev = z_t

    def guide(self, mini_batch, mini_batch_reversed, mini_batch_mask, mini_batch_seq_lengths, annealing_factor=1.0):
        T_max = mini_batch.size(1)
        pyro.module(*self.registered("guide"))
        h_0_contig = self.h_0.expand(1, mini_batch.size(0), self.rnn.hidden_size).contiguous()
        rnn_output, _ = self.rnn(mini_batch_reversed, h_0_contig)
        rnn_output = pad_and_reverse(rnn_output, mini_batch_seq_lengths)
        z_prev = self.z_q_0.expand(mini_batch.size(0), self.z_q_0.size(0))
        with pyro.plate("z_minibatch", len(mini_batch)):
            for t in pyro.markov(range(1, T_max + 1)):
                h_t = rnn_output[:, t - 1, :].expand(z_prev.shape[:-1] + (-1,))
                z_loc, z_scale = self.combiner(z_prev, h_t)
                with pyro.poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample(
                        f"z_{t}",
                        dist.Normal(z_loc, z_scale).mask(mini_batch_mask[:, t - 1 : t]).to_event(1),
                    )
                z_prev = z_t


def sequences(n, t_max=6, seed=0):
    """Binary sequences of lengths 2..t_max, zero-padded: a slow random walk of which notes are on."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, t_max + 1, (n,), generator=gen)
    probs = torch.rand(n, 1, DATA_DIM, generator=gen).expand(n, t_max, DATA_DIM)
    seqs = (torch.rand(n, t_max, DATA_DIM, generator=gen) < probs).to(torch.get_default_dtype())
    seqs = seqs * (torch.arange(t_max)[None, :, None] < lengths[:, None, None])
    return seqs, lengths


@pytest.mark.parametrize(("method", "particles"), [("vae", 1), ("iwae", 3)])
def test_dmm_objective_equals_pyro(float64, method, particles):
    dmm = DMM()
    rows = sequences(7)
    built = get_mini_batch(*rows)
    elbo = (
        Trace_ELBO()
        if method == "vae"
        else RenyiELBO(alpha=0, num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    )
    assert_same_objective(
        dmm.model,
        dmm.guide,
        rows,
        method=method,
        num_particles=particles,
        elbo=elbo,
        pyro_data=(*built, 0.3),
        step_kwargs={"annealing_factor": 0.3},
        arguments=get_mini_batch,
    )


def test_dmm_trains_with_annealing_and_is_evaluated():
    train, held_out = sequences(60, seed=1), sequences(30, seed=2)
    dmm = DMM()

    def held_out_elbo():
        return ppdgm.evaluate.elbo(dmm.model, dmm.guide, held_out, 20, batch_size=30, arguments=get_mini_batch)

    before = held_out_elbo().mean
    run = ppdgm.fit(
        dmm.model,
        dmm.guide,
        train,
        "vae",
        steps=150,
        batch_size=20,
        lr=0.01,
        arguments=get_mini_batch,
        step_kwargs={"annealing_factor": lambda step, epoch: min(1.0, 0.2 + step / 100)},
        compile=False,
        progress=False,
    )
    after = held_out_elbo().mean
    assert after > before + 0.5, (before, after)
    assert run.config["arguments"] == "get_mini_batch"
    log_px = ppdgm.evaluate.log_likelihood(
        dmm.model, dmm.guide, held_out, 50, batch_size=30, arguments=get_mini_batch, compile=False
    )
    assert torch.isfinite(log_px.values).all()
    assert log_px.mean >= after - 0.5  # log p(x) is above the ELBO up to Monte Carlo error
    draws = ppdgm.sample(run, 4)  # no data column holds a time step: every observed site's draws, by name
    assert sorted(draws) == sorted(f"obs_x_{t}" for t in range(1, len(draws) + 1)) and len(draws) >= 2
    assert all(v.shape == (4, DATA_DIM) and set(v.unique().tolist()) <= {0.0, 1.0} for v in draws.values())


def test_dmm_iwae_trains_and_auto_compile_runs_eagerly_naming_the_host_read():
    train = sequences(40, seed=3)
    kwargs = dict(steps=6, batch_size=20, arguments=get_mini_batch, progress=False, num_particles=3)
    pyro.set_rng_seed(0)
    eager = DMM()
    ppdgm.fit(eager.model, eager.guide, train, "iwae", compile=False, **kwargs)
    pyro.set_rng_seed(0)
    auto = DMM()
    with pytest.warns(CompileWarning, match=r"reads a tensor on the host .* at .*test_dmm\.py"):
        ppdgm.fit(auto.model, auto.guide, train, "iwae", **kwargs)
    for a, b in zip(eager.parameters(), auto.parameters()):
        assert torch.equal(a, b)


def generated_sequences(values, sequences, lengths):
    """The dreamt time steps as rows of the data: ``get_mini_batch`` sorted the rows by length before the model
    generated them, so they go back through the same permutation."""
    _, order = torch.sort(lengths, descending=True)
    steps = torch.stack([values[f"obs_x_{t}"] for t in range(1, len(values) + 1)], dim=1)
    dreamt = torch.zeros_like(sequences)
    dreamt[order, : steps.shape[1]] = steps
    return dreamt, lengths


def test_dmm_trains_under_wake_sleep_with_generated_rows():
    """The sleep phase dreams a DMM's time steps through get_mini_batch and hands the guide the rows a hook builds."""
    train, held_out = sequences(60, seed=1), sequences(30, seed=2)
    dmm = DMM(split=True)

    def held_out_elbo():
        return ppdgm.evaluate.elbo(dmm.model, dmm.guide, held_out, 20, batch_size=30, arguments=get_mini_batch).mean

    before = held_out_elbo()
    run = ppdgm.fit(
        dmm.model, dmm.guide, train, "ws", steps=150, batch_size=20, lr=0.01, arguments=get_mini_batch,
        generated_rows=generated_sequences, compile=False, progress=False,
    )  # fmt: skip
    after = held_out_elbo()
    assert after > before + 0.5, (before, after)
    assert run.config["generated_rows"] == "generated_sequences"
    sleep = [record["train_sleep_log_q"] for record in run.history]
    assert sleep[-1] > sleep[0], sleep


def test_rows_left_in_the_programs_order_are_refused():
    """A hook that forgets get_mini_batch's sort pairs each dreamt latent with another row's time steps."""

    def unsorted(values, sequences, lengths):
        steps = torch.stack([values[f"obs_x_{t}"] for t in range(1, len(values) + 1)], dim=1)
        dreamt = torch.zeros_like(sequences)
        dreamt[:, : steps.shape[1]] = steps
        return dreamt, lengths

    dmm = DMM(split=True)
    with pytest.raises(ConventionError, match=r"generated_rows='unsorted' does not give the generated observations"):
        ppdgm.fit(
            dmm.model, dmm.guide, sequences(20, seed=1), "ws", steps=1, batch_size=20, arguments=get_mini_batch,
            generated_rows=unsorted, compile=False, progress=False,
        )  # fmt: skip


@pytest.mark.parametrize("method", ["wake-sleep", "gan"])
def test_model_side_methods_refuse_built_arguments(method):
    """Generated observations cannot be put back through a function that built the programs' arguments."""

    def model(x, temperature):
        w = pyro.param("w", torch.zeros(3))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + w, temperature).to_event(1), obs=x)

    def guide(x, temperature):
        v = pyro.param("v", torch.zeros(3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x + v, 1.0).to_event(1))

    def with_temperature(x):
        return x, 2.0

    with pytest.raises(ConventionError, match=r"arguments=\.\.\. ppdgm cannot tell which of the programs' arguments"):
        ppdgm.fit(model, guide, torch.randn(20, 3), method, steps=1, arguments=with_temperature, progress=False)


def test_vae_with_a_discrete_latent_trains_a_pair_called_through_arguments():
    """The NVIL score-function term needs the data only for a baseline network; without one, vae trains a pair whose
    arguments are built from the batch, whatever column the observed site reads."""

    def model(x, temperature):
        w = pyro.param("w", torch.zeros(3))
        with pyro.plate("data", x.shape[0]):
            b = pyro.sample("b", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(b[:, None] + w, temperature).to_event(1), obs=x)

    def guide(x, temperature):
        logit = pyro.param("logit", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("b", dist.Bernoulli(logits=logit.expand(x.shape[0])))

    def with_temperature(x):
        return x, 2.0

    x = torch.randn(20, 3) + 1.0
    run = ppdgm.fit(model, guide, x, "vae", steps=5, arguments=with_temperature, compile=False, progress=False)
    assert run.history[-1]["step"] == 5


def test_a_site_kind_the_first_batch_lacked_is_refused():
    """Sites that only longer sequences have are scored (the DMM's z_6); one of a kind the first batch's checks did
    not see (here a discrete latent from the fifth step on) is refused by name, not scored by the wrong rule."""

    def model(x, lengths):
        with pyro.plate("data", x.shape[0]):
            for t in range(int(lengths.max())):
                kind = dist.Bernoulli(0.5) if t >= 4 else dist.Normal(0.0, 1.0)
                z = pyro.sample(f"z_{t}", kind)
                pyro.sample(f"x_{t}", dist.Normal(z, 1.0), obs=x[:, t])

    def guide(x, lengths):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            for t in range(int(lengths.max())):
                kind = dist.Bernoulli(torch.sigmoid(loc)) if t >= 4 else dist.Normal(loc, 1.0)
                pyro.sample(f"z_{t}", kind)

    x = torch.randn(8, 6)
    lengths = torch.tensor([3, 3, 3, 3, 6, 6, 6, 6])
    with pytest.raises(ConventionError, match=r"site 'z_4' appears in this batch but not in the first one"):
        ppdgm.fit(
            model, guide, (x, lengths), "vae", steps=2, batch_size=4, shuffle=False, compile=False, progress=False
        )

"""Pyro's semi-supervised VAE (Kingma et al. 2014, M2) as its example writes it: ``model(xs, ys=None)``, a guide
that samples ``y`` only when it is not given (enumerated by ``config_enumerate`` applied as a call), and the auxiliary
classification loss ``model_classify``/``guide_classify``; trained on a labelled and an unlabelled stream at once."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn

import ppdgm
from ppdgm.programs.sites import ConventionError

from .harness import assert_same_objective


class Exp(nn.Module):
    def forward(self, val):
        return torch.exp(val)


class ConcatMLP(nn.Module):
    """An MLP on the concatenation of its inputs, with one or two heads (the example's ``MLP`` in small)."""

    def __init__(self, input_size, hidden, heads):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_size, hidden), nn.Softplus())
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(hidden, size), act) for size, act in heads)

    def forward(self, inputs):
        if isinstance(inputs, list):  # the example's ConcatModule with allow_broadcast (enumerated ys)
            shape = torch.broadcast_shapes(*[t.shape[:-1] for t in inputs]) + (-1,)
            inputs = torch.cat([t.expand(shape) for t in inputs], -1)
        hidden = self.body(inputs)
        out = [head(hidden) for head in self.heads]
        return out[0] if len(out) == 1 else out


class SSVAE(nn.Module):
    def __init__(self, output_size=10, input_size=64, z_dim=8, hidden=64, aux_loss_multiplier=46.0):
        super().__init__()
        self.output_size, self.input_size, self.z_dim = output_size, input_size, z_dim
        self.aux_loss_multiplier = aux_loss_multiplier
        self.encoder_y = ConcatMLP(input_size, hidden, [(output_size, nn.Softmax(dim=-1))])
        self.encoder_z = ConcatMLP(input_size + output_size, hidden, [(z_dim, nn.Identity()), (z_dim, Exp())])
        self.decoder = ConcatMLP(z_dim + output_size, hidden, [(input_size, nn.Sigmoid())])

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        options = dict(dtype=xs.dtype, device=xs.device)
        with pyro.plate("data"):
            prior_loc = torch.zeros(batch_size, self.z_dim, **options)
            prior_scale = torch.ones(batch_size, self.z_dim, **options)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            alpha_prior = torch.ones(batch_size, self.output_size, **options) / (1.0 * self.output_size)
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            loc = self.decoder.forward([zs, ys])
            pyro.sample("x", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=xs)
            return loc

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                alpha = self.encoder_y.forward(xs)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            loc, scale = self.encoder_z.forward([xs, ys])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def classifier(self, xs):
        alpha = self.encoder_y.forward(xs)
        res, ind = torch.topk(alpha, 1)
        return torch.zeros_like(alpha).scatter_(1, ind, 1.0)

    def model_classify(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data"):
            if ys is not None:
                alpha = self.encoder_y.forward(xs)
                with pyro.poutine.scale(scale=self.aux_loss_multiplier):
                    pyro.sample("y_aux", dist.OneHotCategorical(alpha), obs=ys)

    def guide_classify(self, xs, ys=None):
        pass


def digits(labelled_per_class=5, seed=0):
    """sklearn's 8x8 digits, binarised: a few labelled rows per class, the other training rows unlabelled, a test
    split."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0 > 0.5, dtype=torch.get_default_dtype())
    y = torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = order[:400], order[400:]
    labelled = torch.cat([train[y[train] == c][:labelled_per_class] for c in range(10)])
    unlabelled = train[~torch.isin(train, labelled)]
    one_hot = nn.functional.one_hot(y, 10).to(x.dtype)
    return (x[labelled], one_hot[labelled]), x[unlabelled], (x[test], y[test])


@pytest.mark.parametrize("labelled", [True, False])
def test_ss_vae_objective_equals_pyro(float64, labelled):
    """One labelled or unlabelled batch: TraceEnum_ELBO of the enumerated pair plus the classifier's Trace_ELBO."""
    ss_vae = SSVAE(z_dim=3, hidden=16)
    (xs, ys), unlabelled, _ = digits()
    data = (xs[:12], ys[:12]) if labelled else unlabelled[:12]
    guide = config_enumerate(ss_vae.guide, "parallel", expand=True)
    programs = assert_same_objective(
        ss_vae.model,
        guide,
        data,
        elbo=Trace_ELBO() if labelled else TraceEnum_ELBO(max_plate_nesting=1),  # as SVI, without its warning
        auxiliary=[(ss_vae.model_classify, ss_vae.guide_classify)],
    )
    assert programs.structure.guide_enumerated == (() if labelled else ("y",))


def test_ss_vae_trains_on_two_streams_and_beats_the_labelled_rows_alone():
    (xs, ys), unlabelled, (x_test, y_test) = digits(labelled_per_class=5)
    baseline = LogisticRegression(max_iter=2000).fit(xs.numpy(), ys.argmax(-1).numpy())
    baseline_accuracy = float((torch.tensor(baseline.predict(x_test.numpy())) == y_test).float().mean())

    pyro.set_rng_seed(0)
    ss_vae = SSVAE()
    run = ppdgm.fit(
        ss_vae.model,
        config_enumerate(ss_vae.guide, "parallel", expand=True),
        ppdgm.Interleaved((xs, ys), unlabelled),
        "vae",
        epochs=40,
        batch_size=50,
        lr=3e-3,
        auxiliary=[(ss_vae.model_classify, ss_vae.guide_classify)],
        progress=False,
    )
    with torch.no_grad():
        accuracy = float((ss_vae.classifier(x_test).argmax(-1) == y_test).float().mean())
    assert accuracy > baseline_accuracy + 0.03, (accuracy, baseline_accuracy)
    assert run.config["auxiliary"] == [["SSVAE.model_classify", "SSVAE.guide_classify", 1.0]]
    assert run.history[-1]["train_auxiliary_loss"] > 0


def test_interleaved_epoch_spreads_each_source_evenly_and_resumes_mid_epoch():
    a, b = torch.zeros(20, 2), (torch.ones(60, 2), torch.arange(60))
    source = ppdgm.Interleaved(a, b)
    assert source.batches_per_epoch(10) == 8
    assert source.order(10) == [1, 0, 1, 1, 1, 0, 1, 1]
    whole = list(source.batches(3, 10, seed=1, shuffle=True))
    assert [torch.is_tensor(rows) for _, rows in whole] == [False, True, False, False, False, True, False, False]
    labels = torch.cat([rows.args[1] for _, rows in whole if not torch.is_tensor(rows)])
    assert sorted(labels.tolist()) == list(range(60))  # every row of the labelled source once
    resumed = list(source.batches(3, 10, seed=1, shuffle=True, start=5))
    for (_, x), (_, y) in zip(whole[5:], resumed):
        assert type(x) is type(y) and (torch.equal(x, y) if torch.is_tensor(x) else torch.equal(x.args[1], y.args[1]))


def test_methods_with_separate_players_refuse_a_second_layout_and_auxiliary_pairs():
    ss_vae = SSVAE(z_dim=3, hidden=16)
    (xs, ys), unlabelled, _ = digits()
    with pytest.raises(ConventionError, match=r"no one loss to add the auxiliary pair\(s\) to"):
        ppdgm.fit(
            ss_vae.model, ss_vae.guide, (xs, ys), "rws", steps=1, progress=False,
            auxiliary=[(ss_vae.model_classify, ss_vae.guide_classify)],
        )  # fmt: skip
    with pytest.raises(ConventionError, match=r"'aavae' trains on batches of one layout"):
        ppdgm.fit(
            ss_vae.model, config_enumerate(ss_vae.guide, "parallel", expand=True),
            ppdgm.Interleaved((xs, ys), unlabelled), "aavae", steps=12, batch_size=50, progress=False,
        )  # fmt: skip

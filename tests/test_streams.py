"""torch Datasets, DataLoaders and IterableDatasets as training data, and the random row transforms."""

from __future__ import annotations

import pyro
import pytest
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

import ppdgm
from ppdgm.data.named import load_digits
from ppdgm.data.order import noise_key
from ppdgm.data.streams import materialize
from ppdgm.data.transforms import Dequantization, DynamicBinarization
from ppdgm.models import ConditionalVAE
from ppdgm.zoo import build

ROWS, BATCH = 130, 20  # 7 batches an epoch, the last of 10 rows


def _rows(binary: bool = True) -> torch.Tensor:
    return load_digits(binary=binary).train[:ROWS]


def _fit(data, steps: int = 14, seed: int = 3, **options) -> ppdgm.Run:
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = build("vae-mlp", 64, hidden=(16,), z_dim=4)
    options.setdefault("batch_size", BATCH)
    return ppdgm.fit(model, guide, data, "vae", steps=steps, seed=seed, progress=False, **options)


def _params(run: ppdgm.Run) -> list[torch.Tensor]:
    return [p.detach().clone() for player in run.engine.players.values() for p in player.params]


def _same(a: ppdgm.Run, b: ppdgm.Run) -> None:
    for x, y in zip(_params(a), _params(b), strict=True):
        assert torch.equal(x, y)
    assert [r["train_elbo"] for r in a.history] == [r["train_elbo"] for r in b.history]


class Rows(Dataset):
    """A map-style data set that counts its reads (and can be told to stop at one, like Ctrl-C)."""

    def __init__(self, rows: torch.Tensor, stop_at: int | None = None) -> None:
        self.rows, self.reads, self.stop_at = rows, 0, stop_at

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        self.reads += 1
        if self.stop_at is not None and self.reads > self.stop_at:
            raise KeyboardInterrupt
        return self.rows[i]


class InOrder(IterableDataset):
    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __iter__(self):
        yield from self.rows


def test_a_dataset_and_a_dataloader_train_to_the_tensor_inputs_parameters():
    rows = _rows()
    reference = _fit(rows)
    _same(reference, _fit(TensorDataset(rows)))
    _same(reference, _fit(Rows(rows)))
    loader = DataLoader(TensorDataset(rows), batch_size=BATCH, shuffle=True)
    _same(reference, _fit(loader, batch_size=None))  # the loader's batch size and shuffle, ppdgm's seeded order
    assert _fit(loader, batch_size=None).config["batch_size"] == BATCH


def test_dataloader_workers_read_the_same_batches():
    rows = _rows()
    loader = DataLoader(TensorDataset(rows), batch_size=BATCH, shuffle=True, num_workers=2)
    _same(_fit(rows), _fit(loader))


def test_an_iterable_dataset_trains_like_the_rows_in_its_order():
    rows = _rows()
    _same(_fit(rows, shuffle=False), _fit(InOrder(rows)))
    loader = DataLoader(TensorDataset(rows), batch_size=BATCH, shuffle=False)
    _same(_fit(rows, shuffle=False), _fit(loader))


def test_an_iterable_dataset_without_a_length_needs_steps():
    with pytest.raises(ppdgm.PpdgmError, match="IterableDataset without __len__ .* give steps"):
        pyro.clear_param_store()
        model, guide = build("vae-mlp", 64, hidden=(16,), z_dim=4)
        ppdgm.fit(model, guide, InOrder(_rows()), "vae", epochs=1, progress=False)


def test_image_label_tuples_are_columns_like_a_tuple_of_tensors():
    grey = load_digits()
    x = (grey.train[:ROWS] > 0.5).float()
    y = torch.nn.functional.one_hot(grey.labels["train"][:ROWS], 10).float()

    def fit(data):
        pyro.clear_param_store()
        torch.manual_seed(0)
        cvae = ConditionalVAE(64, 10, z_dim=4, hidden=(16,))
        run = ppdgm.fit(cvae.model, cvae.guide, data, "vae", steps=9, batch_size=BATCH, progress=False)
        return run

    _same(fit((x, y)), fit(TensorDataset(x, y)))
    assert fit(TensorDataset(x, y)).config["columns"] == "0: (64,) float32, 1: (10,) float32"


def test_a_run_stopped_mid_epoch_resumes_from_its_step_checkpoint_bit_for_bit(tmp_path):
    rows = _rows()
    whole = _fit(rows, steps=17, checkpoint_dir=tmp_path / "whole")
    probe = Rows(rows)
    _fit(probe, steps=1)
    inspection = probe.reads - BATCH  # rows read to inspect the programs and check the data
    data = Rows(rows, stop_at=inspection + 11 * BATCH + 3)  # stops while reading step 12 (epoch 2, batch 5)
    with pytest.raises(ppdgm.TrainingInterrupted):
        _fit(DataLoader(data, batch_size=BATCH, shuffle=True), steps=17, checkpoint_every=5, checkpoint_dir=tmp_path)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (saved["epoch"], saved["step"], saved["partial"]["position"]) == (1, 10, 3)  # epoch 2, after 3 batches
    data.stop_at, data.reads = None, 0
    resumed = _fit(
        DataLoader(data, batch_size=BATCH, shuffle=True), steps=17, checkpoint_every=5, checkpoint_dir=tmp_path
    )
    assert data.reads == inspection + 3 * BATCH + 10 + 3 * BATCH  # epoch 2's first 3 batches are not read again
    _same(whole, resumed)
    assert [r["seconds"] > 0 for r in resumed.history] == [True, True, True]


def test_an_iterable_dataset_resumes_mid_epoch_by_reading_past_the_done_batches(tmp_path):
    rows = _rows()
    whole = _fit(rows, steps=12, shuffle=False)
    _fit(InOrder(rows), steps=10, checkpoint_every=10, checkpoint_dir=tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["partial"]["position"] == 3
    _same(whole, _fit(InOrder(rows), steps=12, checkpoint_every=10, checkpoint_dir=tmp_path))


class Logged(Dataset):
    """A map-style data set that logs which rows were read."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows, self.read = rows, []

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        self.read.append(int(i))
        return self.rows[i]


def _trained_reads(sampler_of, epochs=2):
    data = Logged(_rows())
    loader = DataLoader(data, batch_size=BATCH, sampler=sampler_of(data))
    data.read.clear()
    run = _fit(loader, steps=None, epochs=epochs, validate_every=0)
    steps = [r["step"] for r in run.history]
    return data, run, steps


def test_sampling_with_replacement_and_num_samples_is_honoured():
    """RandomSampler(replacement=True, num_samples=50): 50 rows an epoch (3 batches), drawn with replacement from the
    seed; a plain shuffle trains to other parameters; the same seed to the same ones."""
    data, run, steps = _trained_reads(lambda d: RandomSampler(d, replacement=True, num_samples=50), epochs=4)
    assert steps == [3, 6, 9, 12]
    training = data.read[-4 * 50 :]  # the fingerprint and inspection read rows before training
    assert len(training) == 200 and len(set(training)) < 200 - 20  # draws repeat rows (about 34 of 200 would not)
    again, rerun, _ = _trained_reads(lambda d: RandomSampler(d, replacement=True, num_samples=50), epochs=4)
    assert again.read[-200:] == training
    _same(run, rerun)
    shuffled = _fit(DataLoader(TensorDataset(_rows()), batch_size=BATCH, shuffle=True), steps=12)
    assert not torch.equal(_params(run)[0], _params(shuffled)[0])


def test_weighted_and_subset_samplers_read_only_their_rows():
    weights = torch.cat([torch.ones(50), torch.zeros(ROWS - 50)])
    data, _, steps = _trained_reads(lambda d: WeightedRandomSampler(weights, 50, replacement=False), epochs=1)
    assert steps == [3] and sorted(data.read[-50:]) == list(range(50))  # the rows of weight one, each once
    data, _, steps = _trained_reads(lambda d: SubsetRandomSampler(range(40, 90)), epochs=2)
    assert steps == [3, 6]
    for epoch in (data.read[-100:-50], data.read[-50:]):
        assert sorted(epoch) == list(range(40, 90))  # every row of the subset once per epoch, in a seeded order
    assert data.read[-100:-50] != data.read[-50:]


def test_a_resumed_fit_draws_the_same_sampled_rows(tmp_path):
    loader = DataLoader(TensorDataset(_rows()), batch_size=BATCH, sampler=RandomSampler(range(ROWS), True, 50))
    whole = _fit(loader, steps=8)
    _fit(loader, steps=4, checkpoint_dir=tmp_path, checkpoint_every=1)
    _same(whole, _fit(loader, steps=8, checkpoint_dir=tmp_path, checkpoint_every=1))


def test_samplers_ppdgm_cannot_honour_are_refused_with_the_reason():
    rows = TensorDataset(_rows())

    class EveryOther(torch.utils.data.Sampler):
        def __iter__(self):
            return iter(range(0, ROWS, 2))

        def __len__(self):
            return ROWS // 2

    with pytest.raises(ppdgm.PpdgmError, match="EveryOther cannot be read in ppdgm's seeded order"):
        _fit(DataLoader(rows, batch_size=BATCH, sampler=EveryOther()))
    sampler = DistributedSampler(rows, num_replicas=2, rank=0)
    with pytest.raises(ppdgm.PpdgmError, match="DistributedSampler: ppdgm splits each global batch over the ranks"):
        _fit(DataLoader(rows, batch_size=BATCH, sampler=sampler))
    weighted = WeightedRandomSampler(torch.ones(ROWS), ROWS)
    with pytest.raises(ppdgm.PpdgmError, match=r"shuffle=False, but the DataLoader's sampler draws .*\(weighted\)"):
        _fit(DataLoader(rows, batch_size=BATCH, sampler=weighted), shuffle=False)


def test_items_that_are_not_tensors_are_refused_with_a_hint():
    class Strings(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return object()

    with pytest.raises(Exception, match="ToTensor"):
        _fit(Strings())


def test_dynamic_binarization_draws_afresh_each_epoch_and_the_same_for_a_seed():
    grey = load_digits().train[:ROWS]
    binarize = DynamicBinarization()
    draw = binarize(grey, noise_key(0, 0, 0), slice(None), ROWS)
    assert set(draw.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(draw, binarize(grey, noise_key(0, 0, 0), slice(None), ROWS))
    assert not torch.equal(draw, binarize(grey, noise_key(0, 1, 0), slice(None), ROWS))
    halves = [binarize(grey[s], noise_key(0, 0, 0), s, ROWS) for s in (slice(0, 65), slice(65, None))]
    assert torch.equal(torch.cat(halves), draw)  # a rank's block gets its rows of the global draw
    many = torch.stack([binarize(grey, noise_key(0, e, 0), slice(None), ROWS) for e in range(400)])
    torch.testing.assert_close(many.mean(0), grey, atol=0.1, rtol=0)  # E[x] = intensity
    assert draw[grey == 0].eq(0).all() and draw[grey == 1].eq(1).all()


def test_dequantization_keeps_the_8_bit_value_and_fills_its_bin():
    pixels = torch.randint(0, 256, (50, 12)).float() / 255
    out = Dequantization()(pixels, 7, slice(None), 50)
    assert torch.equal((out * 256).floor(), (pixels * 255).round())
    assert ((out * 256) % 1).std() > 0.25  # spread over the bin, roughly uniform


def test_a_binarize_transform_trains_a_bernoulli_model_on_grey_rows_and_evaluates_a_fixed_draw():
    grey = load_digits()
    run = _fit(TensorDataset(grey.train[:ROWS]), transform="binarize", steps=7)
    assert run.config["transform"] == "binarize"
    with pytest.raises(ppdgm.PpdgmError, match="support"):
        _fit(TensorDataset(grey.train[:ROWS]), steps=1)  # grey values are outside a Bernoulli's support
    a = materialize(TensorDataset(grey.test), transform=DynamicBinarization(), seed=1)
    assert torch.equal(a, materialize(grey.test, transform=DynamicBinarization(), seed=1))


def test_a_longer_budget_continues_the_epoch_a_shorter_one_ended_inside(tmp_path):
    rows = _rows()
    _fit(rows, steps=10, checkpoint_dir=tmp_path)  # ends after 3 of epoch 2's 7 batches
    resumed = _fit(rows, steps=17, checkpoint_dir=tmp_path)
    _same(_fit(rows, steps=17), resumed)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]


def test_evaluation_reads_a_torch_dataset_like_its_rows():
    run = _fit(_rows(), steps=3)
    test = load_digits(binary=True).test[:50]
    torch.manual_seed(1)
    a = ppdgm.evaluate.log_likelihood(run.model, run.guide, test, num_samples=8)
    torch.manual_seed(1)
    b = ppdgm.evaluate.log_likelihood(run.model, run.guide, TensorDataset(test), num_samples=8)
    assert a.mean == b.mean


def test_the_cli_trains_with_a_transform_and_evaluates_a_fixed_draw(tmp_path, capsys):
    import json

    from ppdgm.cli.main import main

    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--transform", "binarize", "--steps", "5", "--checkpoint-every", "2"]
    assert main([*args, "--z-dim", "2", "--hidden", "8", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["fit"]["transform"] == "binarize"
    assert main(["evaluate", str(out), "--num-samples", "5"]) == 0
    assert "test log-likelihood" in capsys.readouterr().out

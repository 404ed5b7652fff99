"""No host synchronisation inside a training step: every method's step is run with the tensor-to-host
conversions (.item(), .cpu(), float(), .tolist(), .numpy(), bool()) made to fail when ppdgm's own code calls them."""

import sys
from pathlib import Path

import pyro
import pytest
import torch

import ppdgm
from ppdgm.guides import GaussianMLPEncoder, SBNRecognition
from ppdgm.models import RBM, BernoulliMLPModel, CycleTranslators, PixelCNN, SigmoidBeliefNet

from .test_adversarial import user_generator_pair

ROOT = Path(__file__).resolve().parents[1]
OURS = tuple(str(ROOT / d) for d in ("ppdgm", "inference", "models", "guides"))
CONVERSIONS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")


def method_pair(method: str):
    if method in ("mle",):
        return PixelCNN((8, 8), channels=4, layers=2, kernel_size=3), None, "digits-binary", {}
    if method in ("cd", "pcd"):
        return RBM(64, 8), None, "digits-binary", {}
    if method == "cyclegan":
        return CycleTranslators((64, 64), image_side=8, conv_channels=4, conv_layers=2), None, "digits-inverted", {}
    if method in ("ws", "rws"):
        return SigmoidBeliefNet(64, (8,)), SBNRecognition(64, (8,), (16,)), "digits-binary", {}
    if method in ("vae", "iwae"):
        return BernoulliMLPModel(64, 4, (16,)), GaussianMLPEncoder(64, 4, (16,)), "digits-binary", {}
    model, guide, _, _ = user_generator_pair()
    return model, guide, "ring8", {}


@pytest.mark.parametrize("method", sorted(ppdgm.available_methods()))
def test_a_training_step_never_reads_a_tensor_on_the_host(method, monkeypatch):
    model, guide, data, options = method_pair(method)
    run = ppdgm.fit(model, guide, data, method, steps=2, batch_size=16, progress=False, validate_every=0, **options)
    x = run.dataset.train[:16]
    calls = []

    def guarded(name, original):
        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(OURS):
                calls.append(f"{name} from {Path(caller).name}:{sys._getframe(1).f_lineno}")
            return original(self, *args, **kwargs)

        return wrapper

    for name in CONVERSIONS:
        monkeypatch.setattr(torch.Tensor, name, guarded(name, getattr(torch.Tensor, name)))
    with run.params():
        for _ in range(3):
            metrics = run.method.step(run.engine, x)
        with pyro.validation_enabled(False):
            for _ in range(3):  # the compiled step fit runs, replayed from its recording (checked on first use)
                replayed = run.stepper(x)
    monkeypatch.undo()
    assert run.stepper.describe()["fallback"] is None and run.stepper.compiled_steps >= 3
    assert sorted(replayed) == sorted(metrics)
    assert not calls, calls
    assert all(torch.is_tensor(v) and v.dim() == 0 for v in metrics.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype feature")
@pytest.mark.parametrize("method", sorted(ppdgm.available_methods()))
def test_a_gpu_step_never_synchronises_with_the_host(method):
    """On a GPU, CUDA's own sync debugger raises at any host synchronisation inside the step."""
    model, guide, data, options = method_pair(method)
    run = ppdgm.fit(
        model, guide, data, method, steps=2, batch_size=16, progress=False, validate_every=0, device="cuda", **options
    )
    x = run.dataset.train[:16].cuda()
    # as in fit after its first step: Pyro's argument validation (which reads tensors on the host) is off
    with run.params(), pyro.validation_enabled(False):
        run.method.step(run.engine, x)  # warm-up: lazily built state may sync once
        torch.cuda.synchronize()
        try:
            torch.cuda.set_sync_debug_mode("error")
            for _ in range(3):
                metrics = run.method.step(run.engine, x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert all(v.device.type == "cuda" for v in metrics.values())
    counters = [s["step"] for p in run.engine.players.values() for s in p.optimizer.state.values() if "step" in s]
    assert all(c.device.type == "cpu" for c in counters if torch.is_tensor(c))  # torch's host-side step counters

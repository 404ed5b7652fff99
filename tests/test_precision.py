"""bf16: networks autocast to bfloat16, every distribution scored in float32."""

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.poutine.util import site_is_subsample

import ppdgm
from ppdgm.guides import GaussianMLPEncoder
from ppdgm.models import BernoulliMLPModel
from ppdgm.runtime.precision import autocast


def test_bf16_runs_the_networks_in_bfloat16_and_the_distributions_in_float32():
    model, guide = BernoulliMLPModel(64, 4, (16,)), GaussianMLPEncoder(64, 4, (16,))
    outputs = []
    for layer in (m for m in model.modules() if isinstance(m, torch.nn.Linear)):
        layer.register_forward_hook(lambda mod, inp, out: outputs.append(out.dtype))
    x = torch.bernoulli(torch.full((8, 64), 0.3))
    with autocast(torch.device("cpu"), "bf16"):
        guide_trace = poutine.trace(guide).get_trace(x=x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x=x)
    assert outputs and set(outputs) == {torch.bfloat16}
    for trace in (guide_trace, model_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                assert site["value"].dtype == torch.float32, site["name"]
                assert site["fn"].log_prob(site["value"]).dtype == torch.float32, site["name"]
                base = site["fn"].base_dist
                assert all(v.dtype == torch.float32 for v in vars(base).values() if torch.is_tensor(v)), site["name"]


@pytest.mark.parametrize("method", ["vae", "iwae"])
def test_bf16_training_tracks_fp32(method):
    results = {}
    for precision in ("fp32", "bf16"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide = BernoulliMLPModel(64, 8, (64,)), GaussianMLPEncoder(64, 8, (64,))
        run = ppdgm.fit(model, guide, "digits-binary", method, epochs=3, progress=False, precision=precision)
        key = f"valid_{run.method.objective_name}"
        results[precision] = (run.history[0][key], run.history[-1][key])
        assert run.config["precision"] == precision
    fp32_last, (bf16_first, bf16_last) = results["fp32"][1], results["bf16"]
    assert bf16_last - bf16_first > 5  # it trains
    assert abs(bf16_last - fp32_last) < 0.5  # and lands where fp32 does


def test_unknown_precision_is_refused():
    model, guide = BernoulliMLPModel(64, 4, (16,)), GaussianMLPEncoder(64, 4, (16,))
    with pytest.raises(ValueError, match="precision must be one of"):
        ppdgm.fit(model, guide, "digits-binary", "vae", steps=1, progress=False, precision="fp16")

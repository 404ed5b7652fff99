import math

import torch

from ppdgm.inference.iwae import vimco_signal
from ppdgm.programs.combine import log_mean_exp, mean, self_normalised_weights


def test_combiners_work_within_each_datapoint():
    log_w = torch.tensor([[0.0, -1000.0, 2.0], [math.log(3.0), -1001.0, 2.0]], dtype=torch.float64)  # (K=2, B=3)
    assert torch.allclose(mean(log_w), log_w.mean(0))
    expected = torch.tensor([math.log(2.0), -1000.0 + math.log((1 + math.exp(-1)) / 2), 2.0], dtype=torch.float64)
    assert torch.allclose(log_mean_exp(log_w), expected)  # stable for very negative weights
    w = self_normalised_weights(log_w)
    assert torch.allclose(w.sum(0), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(w[:, 0], torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert torch.allclose(w[:, 2], torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_vimco_signal_is_bound_minus_leave_one_out_bound():
    torch.manual_seed(0)
    log_w = torch.randn(4, 3, dtype=torch.float64)
    signal = vimco_signal(log_w)
    for k in range(4):
        others = torch.cat([log_w[:k], log_w[k + 1 :]])
        replaced = log_w.clone()
        replaced[k] = others.mean(0)
        assert torch.allclose(signal[k], log_mean_exp(log_w) - log_mean_exp(replaced))

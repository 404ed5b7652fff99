r"""How K particles per datapoint combine (docs/programs.md).

Every function takes log weights :math:`\log w_{k,b}` of shape ``(K, B)`` — particle k of
datapoint b — and combines **within each datapoint** (over dimension 0), never across the batch.

* :func:`mean` — the ELBO estimate :math:`\frac1K \sum_k \log w_k`;
* :func:`log_mean_exp` — the IWAE bound estimate :math:`\log \frac1K \sum_k w_k`;
* :func:`self_normalised_weights` — :math:`\tilde w_k = w_k / \sum_j w_j` (reweighted wake-sleep,
  the IWAE gradient), each column summing to one.
"""

from __future__ import annotations

import math

import torch


def mean(log_weights: torch.Tensor) -> torch.Tensor:
    """Per-datapoint mean of the log weights over particles, shape ``(B,)``."""
    return log_weights.mean(0)


def log_mean_exp(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) sum_k exp(log w_k) along ``dim``, computed stably."""
    return torch.logsumexp(log_weights, dim) - math.log(log_weights.shape[dim])


def self_normalised_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """Importance weights normalised over the K particles of each datapoint, shape ``(K, B)``."""
    return torch.softmax(log_weights, 0)

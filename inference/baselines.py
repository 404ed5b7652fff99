"""Variance reduction for score-function gradients of non-reparameterisable latents (NVIL).

Mnih & Gregor (2014), "Neural Variational Inference and Learning in Belief Networks": the learning
signal l(x, z) = log p(x, z) - log q(z | x) is centred by a running mean c and an optional
input-dependent baseline C(x), and scaled by a running standard deviation.
"""

from __future__ import annotations

import torch

from ppdgm.errors import UsageError


class NVILBaseline:
    """Running-mean (and optional learned, input-dependent) baseline with variance normalisation.

    Args:
        decay: decay of the running mean and variance of the learning signal.
        net: optional module mapping a batch ``x`` to one number per datapoint (``(B,)`` or ``(B, 1)``),
            trained to predict the centred learning signal. Its parameters form the ``baseline`` player.
        normalise: divide the centred signal by ``max(1, running std)``.
    """

    def __init__(self, decay: float = 0.9, net: torch.nn.Module | None = None, normalise: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise UsageError(f"baseline decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.net = net
        self.normalise = normalise
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None

    def centred(self, signal: torch.Tensor, x: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre and scale ``signal`` (shape ``(K, B)``, detached).

        Returns the centred signal (detached) and the loss that trains the baseline network (zero
        without one). Running statistics are updated on device: no host synchronisation.
        """
        batch_mean = signal.mean()
        batch_var = signal.var(unbiased=False) if signal.numel() > 1 else torch.zeros_like(batch_mean)
        if self.mean is None:
            self.mean, self.var = batch_mean, batch_var
        else:
            self.mean = self.decay * self.mean + (1 - self.decay) * batch_mean
            self.var = self.decay * self.var + (1 - self.decay) * batch_var
        centred = signal - self.mean
        net_loss = signal.new_zeros(())
        if self.net is not None:
            if x is None:
                raise ValueError("an input-dependent baseline needs the observed data x")
            prediction = self.net(x).reshape(-1)
            net_loss = (centred.mean(0) - prediction).pow(2).mean()
            centred = centred - prediction.detach()
        if self.normalise:
            centred = centred / self.var.sqrt().clamp(min=1.0)
        return centred.detach(), net_loss

    def parameters(self) -> list[torch.Tensor]:
        return list(self.net.parameters()) if self.net is not None else []

    def state_dict(self) -> dict:
        return {
            "mean": self.mean,
            "var": self.var,
            "net": self.net.state_dict() if self.net is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var = state["mean"], state["var"]
        if self.net is not None and state.get("net") is not None:
            self.net.load_state_dict(state["net"])

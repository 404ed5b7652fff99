r"""Deep belief net: RBMs stacked greedily, then read as a generative model with an RBM on top.

Hinton, Osindero & Teh (2006), "A Fast Learning Algorithm for Deep Belief Nets". Layer sizes
:math:`(n_v, n_1, \ldots, n_L)`. Pre-training trains RBM 1 on the data, then RBM l on the hidden
probabilities of RBM l-1 given its data, one layer at a time (:meth:`DBN.pretrain`). The result is
a generative model whose top two layers form an undirected RBM and whose lower layers are directed:

.. math::

    p(x, h_1, \ldots, h_{L-1}) = p_{\mathrm{RBM}_L}(h_{L-1}) \prod_{l=1}^{L-1} p(h_{l-1} \mid h_l),
    \qquad p(h_{l-1} = 1 \mid h_l) = \sigma(W_l h_l + b_l),

with :math:`h_0 = x`, the top RBM's hidden layer summed out, and the directed weights initialised
from the RBMs (then untied). :attr:`DBN.model` is that model as a plain Pyro program (a sigmoid
belief net under an RBM prior) and :attr:`DBN.guide` the bottom-up recognition pass with the RBMs'
up-weights, so ``ppdgm.fit(dbn.model, dbn.guide, data, "ws")`` fine-tunes the directed layers by
wake-sleep (the up-down idea without the top-level CD); the top RBM stays as pre-trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import ppdgm
from ppdgm.errors import UsageError
from ppdgm.models.rbm import RBM, RBMMarginal


class DBN(nn.Module):
    """A deep belief net over ``sizes = (x_dim, n_1, ..., n_L)`` (at least two hidden layers).

    Args:
        sizes: the visible size then the hidden layer sizes, bottom-up.
        sample_steps: Gibbs steps of the top RBM per generated sample.
        name: prefix of the names its parameters are registered under.
    """

    def __init__(self, sizes: Sequence[int], sample_steps: int = 200, name: str = "dbn") -> None:
        super().__init__()
        sizes = tuple(int(n) for n in sizes)
        if len(sizes) < 3 or min(sizes) < 1:
            raise UsageError(f"a DBN needs the visible size and at least two hidden sizes, got {sizes!r}")
        self.sizes, self.name = sizes, name
        self.rbms = nn.ModuleList(RBM(sizes[i], sizes[i + 1], seed=i) for i in range(len(sizes) - 1))
        self.rbms[-1].sample_steps = sample_steps
        # generative[l]: layer l+1 -> logits of layer l; recognition[l]: layer l -> logits of layer l+1 (l < L-1)
        self.generative = nn.ModuleList(nn.Linear(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 2))
        self.recognition = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 2))
        self.top_log_z: torch.Tensor | float = 0.0
        self.untie()

    @property
    def top(self) -> RBM:
        return self.rbms[-1]

    @property
    def latent_sites(self) -> tuple[str, ...]:
        return tuple(f"h{i}" for i in range(len(self.sizes) - 2, 0, -1))

    @torch.no_grad()
    def untie(self) -> None:
        """Copy the RBMs' weights into the directed layers: down-weights W_l, up-weights W_l^T."""
        for layer, rbm in enumerate(self.rbms[:-1]):
            self.generative[layer].weight.copy_(rbm.weight)
            self.generative[layer].bias.copy_(rbm.visible_bias)
            self.recognition[layer].weight.copy_(rbm.weight.T)
            self.recognition[layer].bias.copy_(rbm.hidden_bias)

    def normalise_top(self, max_units: int = 20) -> None:
        """Make the model's log p exact: store the top RBM's log Z (by enumeration)."""
        self.top_log_z = self.top.log_partition(max_units).detach()

    def pretrain(self, data, method: str = "cd", epochs: int = 10, lr: float = 0.01, **fit_options) -> list:
        """Greedy layer-wise training: each RBM by ``ppdgm.fit`` on the previous layer's hidden probabilities.

        Returns the runs, bottom-up. Afterwards the directed layers are re-initialised from the RBMs.
        """

        x = ppdgm.data.as_dataset(data).train
        runs = []
        for rbm in self.rbms:
            runs.append(ppdgm.fit(rbm, None, x, method, epochs=epochs, lr=lr, progress=False, **fit_options))
            with torch.no_grad():
                x = torch.bernoulli(rbm.hidden_probs(x))
        self.untie()
        return runs

    def log_joint(self, x: torch.Tensor, hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        """log p(x, h_1, ..., h_{L-1}) computed with the RBMs' own conditionals (before any fine-tuning)."""
        layers = [x, *hidden]
        total = -self.top.free_energy(layers[-1]) - self.top_log_z
        for rbm, below, above in zip(self.rbms[:-1], layers[:-1], layers[1:]):
            probs = rbm.visible_probs(above)
            total = total + (below * probs.log() + (1 - below) * (1 - probs).log()).sum(-1)
        return total

    # ------------------------------------------------------------------ Pyro programs
    def model(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        """The generative model: the top RBM's visible marginal, then directed sigmoid layers down to x."""
        pyro.module(f"{self.name}_generative", self.generative)
        n = x.shape[0] if x is not None else batch_size
        depth = len(self.sizes) - 2
        with pyro.plate("data", n):
            h = pyro.sample(f"h{depth}", RBMMarginal(self.top, self.top_log_z))
            for layer in range(depth - 1, 0, -1):
                h = pyro.sample(f"h{layer}", dist.Bernoulli(logits=self.generative[layer](h)).to_event(1))
            return pyro.sample("x", dist.Bernoulli(logits=self.generative[0](h)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, batch_size: int | None = None) -> None:
        """Bottom-up recognition: h_1 | x, ..., h_{L-1} | h_{L-2}, factorised Bernoulli layers."""
        pyro.module(f"{self.name}_recognition", self.recognition)
        h = x
        with pyro.plate("data", x.shape[0]):
            for layer, net in enumerate(self.recognition, start=1):
                h = pyro.sample(f"h{layer}", dist.Bernoulli(logits=net(h)).to_event(1))

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        return self.model(x, batch_size)

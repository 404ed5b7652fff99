"""Programs shared by tests (the linear-Gaussian pair in float64)."""

import torch
from torch.nn import functional as F

from ppdgm.guides import AffineGaussianGuide, ExactLinearGaussianGuide
from ppdgm.models import LinearGaussianModel
from ppdgm.programs.pair import ProgramPair


def linear_gaussian(x_dim=4, z_dim=2, n=64, seed=0):
    """A float64 linear-Gaussian model, data drawn from it, and its exact-posterior guide."""
    model = LinearGaussianModel(x_dim, z_dim, noise_scale=0.5, seed=seed).double()
    with torch.no_grad():
        z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        noise = torch.randn(n, x_dim, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
        x = z @ model.weight.T + model.bias + 0.5 * noise
    return model, ExactLinearGaussianGuide(model), x


def poor_guide(model, x_dim, z_dim, scale_factor=1.6, shift=0.3):
    """A mean-field affine guide near the exact posterior: its mean is shifted and its scale too wide."""
    guide = AffineGaussianGuide(x_dim, z_dim).double()
    w, s2 = model.weight.detach(), model.noise_scale**2
    cov = torch.linalg.inv(torch.eye(z_dim, dtype=torch.float64) + w.T @ w / s2)
    gain = cov @ w.T / s2  # posterior mean = gain (x - b)
    with torch.no_grad():
        guide.linear.weight.copy_(gain)
        guide.linear.bias.copy_(-gain @ model.bias.detach() + shift)
        target = scale_factor * cov.diagonal().sqrt()
        guide.raw_scale.copy_(target + torch.log(-torch.expm1(-target)))  # softplus^-1
    assert torch.allclose(F.softplus(guide.raw_scale), target)
    return guide


def inspected(model, guide, x, **kwargs):
    programs = ProgramPair(model, guide, **kwargs)
    programs.inspect(x)
    return programs

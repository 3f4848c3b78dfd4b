"""Small MLPs and their dense Jacobian norms, shared by the Lipschitz-bound tests."""

from __future__ import annotations

import torch
from torch import nn

from clipkit.analysis.lipschitz.structure import float64_copy

ACTS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
        "leaky": lambda: nn.LeakyReLU(0.1)}


def mlp(sizes, act, seed, bias_scale=1.0, bias_std=None):
    """Linear layers with ``act`` between them (torch.manual_seed(seed)); the biases are
    scaled by ``bias_scale``, or redrawn from N(0, bias_std^2) when that is given."""
    torch.manual_seed(seed)
    layers = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        with torch.no_grad():
            if bias_std is not None:
                lin.bias.normal_(0.0, bias_std)
            else:
                lin.bias.mul_(bias_scale)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(ACTS[act]())
    return nn.Sequential(*layers)


def jac_norms(model, x):
    """sigma_max of the float64 Jacobian at each row of x, by SVD."""
    m = float64_copy(model)
    J = torch.func.vmap(torch.func.jacrev(lambda v: m(v[None])[0]))(x.double())
    return torch.linalg.matrix_norm(J, ord=2)


def assert_slopes_contain_derivatives(chain, slopes, xs):
    """Every neuron's derivative at the pre-activations of the inputs ``xs`` lies in its
    slope interval (a, b) of ``slopes``."""
    zs = chain.forward(xs)
    for k, (a, b) in enumerate(slopes):
        z = zs[k].detach().requires_grad_(True)
        (dz,) = torch.autograd.grad(chain.acts[k](z).sum(), z)
        assert bool((dz >= a).all()) and bool((dz <= b).all())

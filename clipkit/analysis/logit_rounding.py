"""Logits in float64 with a bound-like scale of their rounding error, for certificates.

A certificate divides a logit margin by a Lipschitz bound, so the margin must not be
rounding: large terms that cancel (a bias of 2^40 removed by the next layer) leave a
float64 margin whose sign is not the exact one, which the logits' own size does not show.
For each affine layer y = A h + b the error of its output is at most about
n·u·(|A||h| + |b|) (u the unit roundoff, n the fan-in; Higham 2002, §3.1), and a later
layer amplifies it by at most the product of the later layers' Lipschitz bounds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipkit.analysis.lipschitz import MLPChain
from clipkit.analysis.lipschitz.estimate import UnsupportedModuleError
from clipkit.analysis.lipschitz.structure import (
    AVGPOOLS,
    BATCHNORMS,
    CONVS,
    ISOMETRIES,
    MAXPOOLS,
    PADS,
    batchnorm_parts,
    float64_copy,
    model_layers,
)
from clipkit.analysis.lipschitz.upper import layer_norms, matrix_norm
from clipkit.core.utils import device_dtype, eval_mode, flat_norm

__all__ = ["logits_with_error"]

_U = 2.0**-53  # float64 unit roundoff
_SAFETY = 4  # on top of the first-order bound n·u: blocked sums, the activations' own ulps


def logits_with_error(model: nn.Module, chain: MLPChain | None, x: Tensor, batch_size: int,
                      norms: list[float] | None = None) -> tuple[Tensor, Tensor]:
    """Logits in float64 and a bound-like scale of their rounding error per point (N,).

    MLPs (``chain``) go through the chain in float64, each layer's error taken at its largest
    entry, 4(n + 1)·u·max(|W||h| + |b|), times the later layers' norms and top slopes. Other
    chains of layers that clipkit reads (CNNs: conv, batch norm, pooling, activations) run as
    a float64 copy layer by layer, each layer's error taken in l2 over the whole feature map,
    4(n + 1)·u·||(|A||h| + |b|)||, times the later layers' bounds ``norms`` (``layer_norms``,
    computed here when not given); an activation adds 4u·||its output||. A model whose
    layers clipkit cannot read keeps an error scale of 0 (the relative margin of
    ``certify._margins`` remains).
    """
    if chain is not None:
        return _mlp_logits(model, chain, x, batch_size)
    try:
        copy = float64_copy(model)
    except RuntimeError:  # e.g. hook-based weight_norm cannot be deep-copied
        copy = model
    try:
        layers = [m for _, m in model_layers(copy)]
        if norms is None:
            norms = [lb.bound for lb in layer_norms(model, tuple(x.shape[1:]))]
    except UnsupportedModuleError:
        layers = None
    dev, dt = device_dtype(copy)
    out, err = [], []
    with eval_mode(copy), torch.no_grad():
        for xb in x.split(batch_size):
            xb = xb.to(dev, dt)
            if layers is None or dt != torch.float64:
                out.append(copy(xb).to("cpu", torch.float64))
                err.append(torch.zeros(len(xb), dtype=torch.float64))
                continue
            logits, e = _chain_logits(layers, norms, xb)
            out.append(logits.to("cpu"))
            err.append(e.to("cpu"))
    return torch.cat(out), torch.cat(err)


def _chain_logits(layers: list[nn.Module], norms: list[float], h: Tensor
                  ) -> tuple[Tensor, Tensor]:
    later = [math.prod(norms[k + 1:]) for k in range(len(layers))]
    e = torch.zeros(len(h), dtype=torch.float64, device=h.device)
    for m, gain in zip(layers, later, strict=True):
        y = m(h)
        size, n = _absolute(m, h, y)
        if size is not None:
            e = e + _SAFETY * (n + 1) * _U * flat_norm(size) * gain
        h = y
    return h, e


def _absolute(m: nn.Module, h: Tensor, y: Tensor) -> tuple[Tensor | None, int]:
    """|A||h| + |b| of an affine layer and its fan-in n; None for an exact one (max pooling,
    reshaping); an activation's output with n = 0 (its own few ulps)."""
    if isinstance(m, nn.Linear):
        bias = None if m.bias is None else m.bias.abs()
        return F.linear(h.abs(), m.weight.abs(), bias), m.weight.shape[1]
    if isinstance(m, CONVS):
        bias = None if m.bias is None else m.bias.abs()
        return m._conv_forward(h.abs(), m.weight.abs(), bias), m.weight[0].numel()
    if isinstance(m, AVGPOOLS):  # nonnegative weights: |A||h| = A|h|
        return m(h.abs()), _window(m, h, y)
    if isinstance(m, BATCHNORMS):  # (h - mu) s + beta per channel
        s, beta, mu = batchnorm_parts(m)
        shape = (1, -1, *[1] * (h.ndim - 2))
        return ((h.abs() + mu.abs().view(shape)) * s.abs().view(shape)
                + beta.abs().view(shape)), 3
    if isinstance(m, MAXPOOLS + ISOMETRIES + PADS):
        return None, 0
    return y.abs(), 0  # an activation


def _window(m: nn.Module, h: Tensor, y: Tensor) -> int:
    """The entries one average-pooling output sums: the kernel's, or for an adaptive
    pooling at most ceil(in / out) + 1 per axis."""
    if hasattr(m, "kernel_size"):
        k = m.kernel_size
        return math.prod(k) if isinstance(k, tuple | list) else int(k) ** max(1, y.ndim - 2)
    d = y.ndim - 2
    return math.prod(-(-h.shape[-i] // y.shape[-i]) + 1 for i in range(1, d + 1))


def _mlp_logits(model: nn.Module, chain: MLPChain, x: Tensor, batch_size: int
                ) -> tuple[Tensor, Tensor]:
    amplify = _amplification(chain)
    out, err = [], []
    with eval_mode(model), torch.no_grad():
        for xb in x.split(batch_size):
            x0 = xb.reshape(len(xb), -1).to("cpu", torch.float64)
            zs = chain.forward(x0)
            inputs = [x0, *(act(z) for act, z in zip(chain.acts, zs, strict=False))]
            e = torch.zeros(len(xb), dtype=torch.float64)
            for k, (w, b, h) in enumerate(zip(chain.weights, chain.biases, inputs, strict=True)):
                size = h.abs() @ w.abs().T + b.abs()
                e = e + _SAFETY * (w.shape[1] + 1) * _U * size.amax(1) * amplify[k]
            out.append(zs[-1])
            err.append(e)
    return torch.cat(out), torch.cat(err)


def _amplification(chain: MLPChain) -> list[float]:
    """For each layer k, a bound on how much an error in its output z_k can grow by the
    logits: the product of the later layers' norms and largest |slopes|."""
    gains = [1.0] * len(chain.weights)
    acc = 1.0
    for k in range(len(chain.weights) - 1, -1, -1):
        gains[k] = acc
        if k > 0:
            lo, hi = chain.slopes[k - 1]
            acc *= matrix_norm(chain.weights[k]) * max(abs(lo), abs(hi))
    return gains

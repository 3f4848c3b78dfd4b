"""Where a network is not differentiable: inputs at which autograd's Jacobian may not be a
slope of f (a pre-activation at an activation's kink, a max-pooling window with a tie)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipkit.analysis.lipschitz.estimate import UnsupportedModuleError
from clipkit.analysis.lipschitz.structure import MAXPOOLS, PIECEWISE_LINEAR, kinks, model_layers
from clipkit.core.utils import eval_mode


def kink_hits(model: nn.Module, x: Tensor) -> Tensor:
    """(N,) bool: whether f may not be differentiable at x_i: some pre-activation of a
    piecewise-linear activation (ReLU, LeakyReLU, Hardtanh, ReLU6, ELU with alpha != 1) sits
    exactly at one of its kinks, or some max-pooling window has its maximum at two entries
    (``pool_ties``). All True where the model is not a chain of layers clipkit reads
    (``model_layers``)."""
    try:
        layers = model_layers(model)
    except UnsupportedModuleError:
        return torch.ones(len(x), dtype=torch.bool, device=x.device)
    hit = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    h = x
    before: nn.Module | None = None
    with eval_mode(model), torch.no_grad():
        for _, m in layers:
            points = _kinks_of(m)
            if points:
                flat = h.reshape(len(h), -1)
                for k in points:
                    hit |= (flat == k).any(dim=1)
            if isinstance(m, MAXPOOLS):
                hit |= pool_ties(m, h, ignore=_flat_outputs(before))
            h = m(h)
            before = m
    return hit


def _kinks_of(m: nn.Module) -> tuple[float, ...]:
    if isinstance(m, nn.ELU):
        return () if float(m.alpha) == 1.0 else (0.0,)
    return kinks(m) if isinstance(m, PIECEWISE_LINEAR) else ()


def _flat_outputs(m: nn.Module | None) -> tuple[float, ...]:
    """Values an activation outputs only on a flat piece or at a kink: ReLU's 0, Hardtanh's
    (and ReLU6's) two bounds. Entries tied at such a value all have slope 0 around x, unless
    a pre-activation sits at the kink, which the activation's own check reports."""
    if isinstance(m, nn.ReLU | nn.Hardtanh):
        return kinks(m)
    return ()


def pool_ties(pool: nn.Module, h: Tensor, ignore: tuple[float, ...] = ()) -> Tensor:
    """(N,) bool: whether some window of the max pooling ``pool`` (MaxPool1d/2d/3d) has its
    maximum at two or more entries of h (ties at a value in ``ignore`` excepted).

    There max is not differentiable and autograd routes the gradient to one of the tied
    entries; with several such choices at once their combination need not be a slope of f.
    The windows are cut out with Tensor.unfold, padded with -inf as max pooling pads; with
    ceil_mode the last window may run past the padding, so the end is padded as far as the
    pooling's own output size needs.
    """
    d = next(i + 1 for i, cls in enumerate(MAXPOOLS) if isinstance(pool, cls))
    out = pool(h)
    k, s, p, dil = (_ntuple(v, d) for v in (pool.kernel_size, pool.stride or pool.kernel_size,
                                            pool.padding, pool.dilation))
    spans = [dil[i] * (k[i] - 1) + 1 for i in range(d)]
    pads: list[int] = []
    for i in reversed(range(d)):  # F.pad lists the last dimension first
        size = h.shape[h.ndim - d + i]
        needed = (out.shape[out.ndim - d + i] - 1) * s[i] + spans[i]
        pads += [p[i], p[i] + max(0, needed - size - 2 * p[i])]
    windows = F.pad(h, pads, value=float("-inf"))
    for i in range(d):
        dim = h.ndim - d + i
        windows = windows.unfold(dim, spans[i], s[i])[..., ::dil[i]]
        windows = windows.narrow(dim, 0, out.shape[dim])
    windows = windows.flatten(start_dim=h.ndim)  # (..., entries of one window)
    top = windows.amax(dim=-1, keepdim=True)
    tied = (windows == top).sum(dim=-1) >= 2
    for value in ignore:
        tied &= top[..., 0] != value
    return tied.reshape(len(h), -1).any(dim=1)


def _ntuple(value: int | tuple[int, ...], d: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (int(value),) * d

"""Exact Lipschitz constants where computable: linear maps, 1-D piecewise-linear networks."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from clipkit.analysis.lipschitz.estimate import Estimate
from clipkit.analysis.lipschitz.structure import (
    CONVS,
    MAXPOOLS,
    PIECEWISE_LINEAR,
    activation_slopes,
    check_supported,
    float64_copy,
    kinks,
    model_layers,
)
from clipkit.analysis.lipschitz.upper import matrix_norm
from clipkit.core.utils import device_dtype


def exact(
    model: nn.Module,
    interval: tuple[float, float] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    grid_points: int = 100_001,
    batch_size: int = 4096,
) -> Estimate:
    """Lip(model) where it is computable.

    * Linear maps (only Linear/Conv/BatchNorm/pooling-by-average/Flatten/Dropout layers): the
      spectral norm of the composed matrix, formed densely in float64 (``interval`` ignored).
    * 1-D input, piecewise-linear activations (ReLU, LeakyReLU, ReLU6, Hardtanh): f is
      piecewise affine on ``interval``; its breakpoints are found layer by layer (where a
      pre-activation, affine between the current breakpoints, crosses a kink), and
      Lip = max over pieces of ||f'(midpoint)||, kind ``"exact"``.
    * 1-D input, other supported activations: max ||f'(t)|| on ``grid_points`` equally spaced
      points, kind ``"grid"`` (an approximation from below, not a certificate).

    Raises:
        ValueError: bad interval, or input dimension != 1 for a nonlinear network.
        UnsupportedModuleError: unsupported layers (same list as the bracket).
    """
    t0 = time.perf_counter()
    leaves = model_layers(model)
    for name, m in leaves:
        check_supported(name, m)
    device, _ = device_dtype(model)
    m64 = float64_copy(model)
    nonlinear = [m for _, m in leaves
                 if (activation_slopes(m) is not None and not isinstance(m, nn.Identity))
                 or isinstance(m, MAXPOOLS)]
    if input_shape is None:
        first = next((m for _, m in leaves if isinstance(m, (nn.Linear, *CONVS))), None)
        if isinstance(first, nn.Linear):
            input_shape = (first.in_features,)
        else:
            raise ValueError("input_shape is required unless the first layer is nn.Linear")
    input_shape = tuple(input_shape)
    if not nonlinear:
        x0 = torch.zeros(input_shape, dtype=torch.float64, device=device)

        def f1(xi: Tensor) -> Tensor:
            return m64(xi.unsqueeze(0)).reshape(-1)

        J = torch.func.jacrev(f1)(x0).reshape(-1, x0.numel())
        return Estimate(matrix_norm(J), "exact", "spectral norm of the linear map",
                        0, None, time.perf_counter() - t0)
    if math.prod(input_shape) != 1:
        raise ValueError(
            f"exact() handles nonlinear networks with 1-D input only; input shape {input_shape}"
        )
    if (interval is None or len(interval) != 2
            or not all(math.isfinite(float(t)) for t in interval)
            or not float(interval[0]) < float(interval[1])):
        raise ValueError(f"interval must be a finite (a, b) with a < b, got {interval!r}")
    a, b = float(interval[0]), float(interval[1])

    def f(t: Tensor) -> Tensor:  # t: (N,) -> (N, out)
        return m64(t.reshape(-1, *input_shape)).reshape(len(t), -1)

    def slopes(t: Tensor) -> Tensor:  # ||f'(t)|| for each t
        out = []
        for tb in t.split(batch_size):
            J = torch.func.vmap(torch.func.jacrev(lambda s: f(s.reshape(1))[0]))(tb)
            out.append(J.reshape(len(tb), -1).norm(dim=1))
        return torch.cat(out)

    if all(isinstance(m, PIECEWISE_LINEAR) for m in nonlinear):
        leaves64 = model_layers(m64)
        ts = torch.tensor([a, b], dtype=torch.float64, device=device)
        with torch.no_grad():
            for idx, (_, m) in enumerate(leaves):
                if not isinstance(m, PIECEWISE_LINEAR) or isinstance(m, nn.Identity):
                    continue
                z = ts.reshape(-1, *input_shape)
                for _, prev in leaves64[:idx]:
                    z = prev(z)
                z = z.reshape(len(ts), -1)  # pre-activations: affine between consecutive ts
                new = [ts]
                for k in kinks(m):
                    z0, z1 = z[:-1] - k, z[1:] - k
                    cross = (z0 * z1) < 0
                    t0s, t1s = ts[:-1, None].expand_as(z0), ts[1:, None].expand_as(z0)
                    tc = t0s - z0 * (t1s - t0s) / (z1 - z0)
                    new.append(tc[cross])
                ts = torch.unique(torch.cat(new))  # sorted
        mids = (ts[:-1] + ts[1:]) / 2
        s = slopes(mids)
        return Estimate(float(s.max()), "exact",
                        "piecewise linear: max slope over the pieces between breakpoints",
                        len(mids), None, time.perf_counter() - t0,
                        f"{len(ts) - 2} breakpoints in [{a:g}, {b:g}]")
    grid = torch.linspace(a, b, grid_points, dtype=torch.float64, device=device)
    s = slopes(grid)
    return Estimate(float(s.max()), "grid", f"max |f'| on a grid of {grid_points} points "
                    "(smooth activations: an approximation from below, not a certificate)",
                    grid_points, None, time.perf_counter() - t0, f"interval [{a:g}, {b:g}]")

"""An MLP read as an affine / elementwise chain f = A_K s_K A_{K-1} ... s_1 A_0 (float64).

The form the semidefinite and closed-form certificates (``sdp``, ``eclipse``) and the local
slope intervals (``slopes``) work on. Convolutional networks are not chains: ``mlp_chain``
returns None for them, and they keep the product bound of ``upper``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clipkit.analysis.lipschitz.structure import (
    ISOMETRIES,
    activation_slopes,
    batchnorm_parts,
    check_supported,
    model_layers,
)
from clipkit.core.utils import device_dtype, eval_mode

__all__ = ["MLPChain", "mlp_chain", "require_chain"]


@dataclass(frozen=True)
class MLPChain:
    """f = A_K s_K A_{K-1} ... s_1 A_0 with A_k(v) = weights[k] v + biases[k] (float64, CPU).

    ``acts[k]`` is the module of s_{k+1}; ``slopes[k]`` its global slope interval.
    ``input_shape`` is the shape of one input (it is flattened).
    """

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]
    acts: tuple[nn.Module, ...]
    slopes: tuple[tuple[float, float], ...]
    input_shape: tuple[int, ...]

    @property
    def widths(self) -> list[int]:
        """n_1, ..., n_K: the hidden widths."""
        return [w.shape[0] for w in self.weights[:-1]]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Pre-activations z_1..z_K and the output, for flattened float64 inputs x (B, n_0)."""
        out, h = [], x
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z = h @ w.T + b
            out.append(z)
            if k < len(self.acts):
                h = self.acts[k](z)
        return out


def _affine(m: nn.Module) -> tuple[Tensor, Tensor] | None:
    """(W, b) of a Linear or eval-mode BatchNorm1d in float64; None for any other layer."""
    if isinstance(m, nn.Linear):
        w = m.weight.detach().to("cpu", torch.float64)
        b = (m.bias.detach().to("cpu", torch.float64) if m.bias is not None
             else torch.zeros(w.shape[0], dtype=torch.float64))
        return w, b
    if isinstance(m, nn.BatchNorm1d):
        s, beta, mu = (t.cpu() for t in batchnorm_parts(m))
        return torch.diag(s), beta - s * mu
    return None


def mlp_chain(model: nn.Module, input_shape: Sequence[int]) -> MLPChain | None:
    """The model as an affine/elementwise chain, or None when it is not an MLP.

    Consecutive affine layers (Linear, BatchNorm1d in eval mode, and activations whose slope
    interval is a single value s, i.e. s * identity) are multiplied out in float64. Layers
    that act on non-flat tensors (convolutions, pooling, BatchNorm2d) make it not an MLP.

    Raises:
        UnsupportedModuleError: for layers clipkit can not bound at all.
    """
    leaves = model_layers(model)
    for name, m in leaves:
        check_supported(name, m)
    device, dtype = device_dtype(model)
    n0 = math.prod(input_shape)
    W = torch.eye(n0, dtype=torch.float64)
    b = torch.zeros(n0, dtype=torch.float64)
    weights, biases, acts, slopes = [], [], [], []
    x = torch.zeros(1, *input_shape, dtype=dtype, device=device)
    with eval_mode(model), torch.no_grad():
        for _, m in leaves:
            if isinstance(m, (*ISOMETRIES, nn.Identity)):
                x = m(x)
                continue
            sl = activation_slopes(m)
            if sl is not None:  # elementwise: acts on the flattened vector whatever the shape
                if sl[0] == sl[1]:  # s * identity
                    W, b = sl[0] * W, sl[0] * b
                else:
                    weights.append(W)
                    biases.append(b)
                    acts.append(m)
                    slopes.append((float(sl[0]), float(sl[1])))
                    W = torch.eye(W.shape[0], dtype=torch.float64)
                    b = torch.zeros(W.shape[0], dtype=torch.float64)
                x = m(x)
                continue
            wb = _affine(m) if x.ndim == 2 else None
            if wb is None:
                return None  # a layer acting on non-flat tensors: not an MLP
            W, b = wb[0] @ W, wb[0] @ b + wb[1]
            x = m(x)
    weights.append(W)
    biases.append(b)
    return MLPChain(tuple(weights), tuple(biases), tuple(acts), tuple(slopes),
                    tuple(int(s) for s in input_shape))


def require_chain(model: nn.Module, input_shape: Sequence[int], what: str) -> MLPChain:
    """``mlp_chain`` or a ValueError saying that ``what`` handles MLPs only."""
    chain = mlp_chain(model, input_shape)
    if chain is None:
        raise ValueError(f"{what} handles MLPs only (Linear, BatchNorm1d, Flatten, Dropout "
                         "and elementwise activations); convolutional networks keep the "
                         "product bound of ck.lipschitz.lipschitz_upper (or pass a certified "
                         "number, e.g. the bracket's upper)")
    return chain

"""Projected gradient ascent on a loss in an ε-ball: the one PGD of clipkit.

The robustness evaluation (``clipkit.analysis.attacks``) and adversarial training
(``clipkit.train.baselines``) both call :func:`pgd`; they differ in where the random start
comes from and in the shape of the batch (``batch_dims``: 1 for (B, *in), 2 for training's
model axis (K, B, *in)). Starting from x = x0 + δ0, each of ``steps`` iterations takes

    x ← Π(x + a·d),   d = g / ‖g‖ (``step="normalized"``, ℓ2) or sign(g) (``step="sign"``),

g the gradient of the loss at x, a the step size, and Π one of two projections:

* ``project="ball"`` (Madry et al.): onto the ball ‖x − x0‖ ≤ ε (ℓ2 or ℓ∞), then a clamp
  to the data range. The clamp keeps the point in the ball, since x0 is in the range.
* ``project="sphere"`` (the CLIP authors' ℓ2 attack): δ = x − x0 clamped so that x0 + δ
  stays in the data range, then rescaled onto the sphere ‖δ‖ = ε. The rescaled point may
  leave the range; the returned point is clamped once more at the end.

``grad_fn`` may also return a mask of the samples to move (the authors' attack moves only
the points still classified correctly); the others keep their current point.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from clipkit.core.utils import broadcast_to, check_finite, flat_norm

__all__ = ["check_in_range", "pgd", "project_ball", "uniform_ball"]

#: loss gradient at x, and optionally the mask (batch shape) of the samples to move
GradFn = Callable[[Tensor], tuple[Tensor, Tensor | None]]


def project_ball(delta: Tensor, eps: float, norm: str, batch_dims: int = 1) -> Tensor:
    """δ projected onto the ε-ball: clamp (ℓ∞), or δ·min(1, ε/‖δ‖) (ℓ2)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = flat_norm(delta, batch_dims).clamp_min(1e-30)
    return delta * broadcast_to((eps / n).clamp(max=1.0), delta)


def uniform_ball(direction: Tensor, radius_u: Tensor, eps: float, batch_dims: int = 1) -> Tensor:
    """A point uniform in the ℓ2 ε-ball from a Gaussian ``direction`` and a U[0, 1) ``radius_u``.

    δ = ε·u^(1/n)·z/‖z‖, n the dimension of one sample (the radius of a uniform point has
    the law u^(1/n)).
    """
    n = direction[(0,) * batch_dims].numel()
    z = direction / broadcast_to(flat_norm(direction, batch_dims).clamp_min(1e-30), direction)
    return z * broadcast_to(eps * radius_u.pow(1.0 / n), direction)


def pgd(
    grad_fn: GradFn,
    x0: Tensor,
    delta0: Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "l2",
    step: str | None = None,
    project: str = "ball",
    clamp: tuple[float, float] | None = (0.0, 1.0),
    batch_dims: int = 1,
) -> Tensor:
    """``steps`` projected ascent steps from x0 + δ0; the last iterate, clamped, detached.

    Args:
        grad_fn: x → (∇_x loss, mask of samples to move or None).
        x0: the clean inputs; delta0: the random start (already in the ball or on the sphere).
        eps, norm: the ball, ``"l2"`` or ``"linf"``.
        steps, step_size: iterations and a.
        step: ``"normalized"`` or ``"sign"``; default: sign for ℓ∞, normalized for ℓ2.
        project: ``"ball"`` or ``"sphere"`` (ℓ2 only), see the module docstring.
        clamp: the data range, or None for unbounded inputs.
        batch_dims: leading batch axes: 1 for (B, *in), 2 for (K, B, *in).
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"pgd: norm must be 'l2' or 'linf', got {norm!r}")
    step = step or ("sign" if norm == "linf" else "normalized")
    if step not in ("normalized", "sign") or project not in ("ball", "sphere"):
        raise ValueError(f"pgd: step must be 'normalized' or 'sign' and project 'ball' or "
                         f"'sphere', got {step!r}, {project!r}")
    if project == "sphere" and norm != "l2":
        raise ValueError("pgd: project='sphere' needs norm='l2'")

    def in_range(x: Tensor) -> Tensor:
        return x if clamp is None else x.clamp(*clamp)

    x0 = x0.detach()
    x = in_range(x0 + delta0) if project == "ball" else x0 + delta0
    for _ in range(steps):
        g, move = grad_fn(x.detach())
        if step == "sign":
            d = g.sign()
        else:
            d = g / broadcast_to(flat_norm(g, batch_dims).clamp_min(1e-30), g)
        moved = x + step_size * d
        if project == "ball":
            new = in_range(x0 + project_ball(moved - x0, eps, norm, batch_dims))
        else:
            delta = in_range(moved) - x0
            n = flat_norm(delta, batch_dims).clamp_min(1e-30)
            new = x0 + delta * broadcast_to(eps / n, delta)
        x = new if move is None else torch.where(broadcast_to(move, new), new, x)
    return in_range(x).detach()


def check_in_range(x: Tensor, clamp: tuple[float, float] | None, name: str, setting: str
                   ) -> None:
    """A ValueError when inputs are not finite or lie outside the data range that an attack
    clamps to.

    Clamping such inputs would move them far more than ε (standardized data, say, into
    [0, 1]), and the accuracy measured would be that of other inputs.
    """
    check_finite(x, name)
    if clamp is None or x.numel() == 0:
        return
    lo, hi = float(x.min()), float(x.max())
    slack = 1e-6 * max(1.0, abs(clamp[0]), abs(clamp[1]))
    if lo < clamp[0] - slack or hi > clamp[1] + slack:
        raise ValueError(
            f"{name} lies in [{lo:.4g}, {hi:.4g}], outside the data range {tuple(clamp)} that "
            f"{setting} keeps inputs in; pass the data's range, or None for unbounded "
            f"(e.g. standardized) inputs")

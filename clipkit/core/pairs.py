"""Input pairs, their difference quotients, and the one ascent that moves them.

For a function f and pairs (u_k, v_k),

    q_k = ‖f(u_k) − f(v_k)‖₂ / ‖u_k − v_k‖₂      (ℓ2 norms of flattened tensors),

and every q_k is a lower bound of Lip(f). The ascent raises the q_k by moving the pairs:
each step proposes u' = Π(u + s_k g_u), v' = Π(v + s_k g_v) (g: the gradient of q_k, or of
q_k^p; Π: a clamp to a box such as the image range) and keeps it only where q_k rose; each
pair has its own step size τ_k, multiplied by ``factor`` after an accepted step and divided
by it after a rejected one. CLIP training (``clipkit.train.clip``) and the Lipschitz lower
bound (``clipkit.analysis.lipschitz.lower``) both use it; their difference is the step
rule (:class:`AscentRule`).

Every tensor carries a model axis K first: u, v are (K, P, *in); q and τ are (K, P); a
``forward`` maps (K, M, *in) → (K, M, *out) (see :func:`stacked`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clipkit.core.utils import broadcast_to, flat_norm

__all__ = [
    "AscentRule",
    "PairState",
    "accept",
    "ascend",
    "propose",
    "quotients",
    "quotients_from",
    "stacked",
    "value",
    "value_and_grad",
]

Forward = Callable[[Tensor], Tensor]
_TINY = 1e-12  # a floor for ‖u − v‖, so that a pair that met gives q = 0, not NaN


def stacked(model: nn.Module) -> Forward:
    """A forward over a model axis for one ``model``: (K, M, *in) → (K, M, *out)."""

    def forward(xk: Tensor) -> Tensor:
        out = model(xk.reshape(-1, *xk.shape[2:]))
        return out.view(xk.shape[0], xk.shape[1], *out.shape[1:])

    return forward


def quotients_from(out: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """The quotients from the outputs ``out = f(cat[u, v])`` (K, 2P, *out) → (K, P)."""
    p = u.shape[1]
    num = flat_norm(out[:, :p] - out[:, p:], 2)
    return num / flat_norm(u - v, 2).clamp_min(_TINY)


def quotients(forward: Forward, u: Tensor, v: Tensor) -> Tensor:
    """q_k = ‖f(u_k) − f(v_k)‖ / ‖u_k − v_k‖ per pair: (K, P, *in) → (K, P). One forward."""
    return quotients_from(forward(torch.cat([u, v], dim=1)), u, v)


def value(forward: Forward, u: Tensor, v: Tensor) -> Tensor:
    """The quotients without an autograd graph (one forward)."""
    with torch.no_grad():
        return quotients(forward, u, v)


def value_and_grad(forward: Forward, u: Tensor, v: Tensor,
                   power: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """q and ∇_u(q^p), ∇_v(q^p) = p·q^(p−1)·∇q per pair: one forward, one backward.

    The backward goes to the inputs only (torch skips the weights' gradients).
    """
    u = u.detach().requires_grad_(True)
    v = v.detach().requires_grad_(True)
    with torch.enable_grad():
        q = quotients(forward, u, v)
        target = q if power == 1 else q**power
        gu, gv = torch.autograd.grad(target.sum(), (u, v))
    return q.detach(), gu, gv


@dataclass(frozen=True)
class AscentRule:
    """How a pair moves, and when a move counts.

    Attributes:
        factor: τ ×= factor after an accepted step, τ ÷= factor after a rejected one.
        step: ``"gradient"``: s = τ (the step is τ·g, CLIP's rule); ``"normalized"``:
            s = τ·‖u − v‖ / ‖(g_u, g_v)‖, a step of relative length τ. The quotient is
            scale free in the pair's distance, so its raw gradient is ~ 1/‖u − v‖ and a
            fixed τ would explode or stall on pairs of very different distances; the
            normalized rule suits a long search from such pairs.
        power: climb q^power (its gradient is power·q^(power−1)·∇q); acceptance always
            compares the quotients themselves.
        clamp: (low, high) for Π, e.g. the image range; None: no clamp.
        min_distance: a proposal closer than this (‖u' − v'‖) is rejected: closer pairs
            measure only rounding.
        rtol: a proposal is accepted where q' > q·(1 + rtol). None: √eps of the dtype
            (1.5e-8 in float64, 3.5e-4 in float32). A pair inside one linear piece of a
            ReLU network has a constant quotient, and its rounding error is amplified by
            the cancellation in f(u) − f(v); deciding on that noise would make runs that
            differ only in summation order (vmap or not) drift apart.
    """

    factor: float = 1.3
    step: str = "gradient"
    power: int = 1
    clamp: tuple[float, float] | None = None
    min_distance: float = 0.0
    rtol: float | None = None

    def __post_init__(self) -> None:
        if self.step not in ("gradient", "normalized"):
            raise ValueError(f"AscentRule: step must be 'gradient' or 'normalized', "
                             f"got {self.step!r}")
        if not self.factor > 1:
            raise ValueError(f"AscentRule: factor must be > 1, got {self.factor!r}")


@dataclass
class PairState:
    """A pair set: pairs (K, P, *in), step sizes and quotients (K, P), and the gradients that
    give the next proposal (None once no step follows).

    ``winner`` is for CLIP's descent step: (index (K,), u_w, v_w (K, 1, *in)).
    """

    u: Tensor
    v: Tensor
    tau: Tensor
    q: Tensor | None = None
    gu: Tensor | None = None
    gv: Tensor | None = None
    winner: tuple[Tensor, Tensor, Tensor] | None = None


def propose(pairs: PairState, rule: AscentRule) -> tuple[Tensor, Tensor]:
    """The proposal u' = Π(u + s·g_u), v' = Π(v + s·g_v) (see :class:`AscentRule` for s)."""
    s = pairs.tau
    if rule.step == "normalized":
        gnorm = (flat_norm(pairs.gu, 2) ** 2 + flat_norm(pairs.gv, 2) ** 2).sqrt()
        s = s * flat_norm(pairs.u - pairs.v, 2) / gnorm.clamp_min(1e-30)
    s = broadcast_to(s, pairs.u)
    u_new, v_new = pairs.u + s * pairs.gu, pairs.v + s * pairs.gv
    if rule.clamp is not None:
        u_new, v_new = u_new.clamp(*rule.clamp), v_new.clamp(*rule.clamp)
    return u_new, v_new


def accept(pairs: PairState, u_new: Tensor, v_new: Tensor, q_new: Tensor,
           gu_new: Tensor | None, gv_new: Tensor | None, rule: AscentRule) -> PairState:
    """Keep the proposal where q rose (τ ×= factor), else the old pair (τ ÷= factor).

    Without the proposals' gradients (``gu_new=None``: no step follows) the result has none.
    """
    rtol = torch.finfo(q_new.dtype).eps ** 0.5 if rule.rtol is None else rule.rtol
    ok = (q_new > pairs.q * (1 + rtol)) & torch.isfinite(q_new)
    if rule.min_distance > 0:
        ok &= flat_norm(u_new - v_new, 2) >= rule.min_distance
    a = broadcast_to(ok, pairs.u)
    keep_grad = gu_new is not None and gv_new is not None
    return PairState(
        u=torch.where(a, u_new, pairs.u), v=torch.where(a, v_new, pairs.v),
        tau=torch.where(ok, pairs.tau * rule.factor, pairs.tau / rule.factor),
        q=torch.where(ok, q_new, pairs.q),
        gu=torch.where(a, gu_new, pairs.gu) if keep_grad else None,
        gv=torch.where(a, gv_new, pairs.gv) if keep_grad else None,
    )


def ascend(forward: Forward, pairs: PairState, steps: int,
           rule: AscentRule = AscentRule()) -> PairState:  # noqa: B008 (frozen: a safe default)
    """``steps`` ascent steps on the quotients (or on q^power) with per-pair step sizes.

    Cost: one forward and backward over the pairs to evaluate them at the current f, then
    per step a forward over the proposals, with a backward for the next step's gradient on
    every step but the last (with ``steps=0``, one forward: the evaluation). The result
    holds the pairs' quotients at the current f, and no gradients.
    """
    u, v = pairs.u.detach(), pairs.v.detach()
    if steps == 0:  # the values alone
        return PairState(u, v, pairs.tau, value(forward, u, v))
    q, gu, gv = value_and_grad(forward, u, v, rule.power)
    pairs = PairState(u, v, pairs.tau, q, gu, gv)
    for i in range(steps):
        u_new, v_new = propose(pairs, rule)
        if i < steps - 1:
            q_new, gu_new, gv_new = value_and_grad(forward, u_new, v_new, rule.power)
        else:  # the last step's gradient would only serve a step that does not come
            q_new, gu_new, gv_new = value(forward, u_new, v_new), None, None
        pairs = accept(pairs, u_new, v_new, q_new, gu_new, gv_new, rule)
    pairs.gu = pairs.gv = None
    return pairs

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

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from clipkit.core.affine_first import AffineFirst, Linearization, low_matmul, pairs_first
from clipkit.core.utils import broadcast_to, flat_norm, stacked

__all__ = [
    "AscentRule",
    "PairState",
    "accept",
    "ascend",
    "joint",
    "propose",
    "quotients",
    "quotients_from",
    "stacked",
    "step_sizes",
    "value",
    "value_and_grad",
]

Forward = Callable[[Tensor], Tensor]
_TINY = 1e-12  # a floor for ‖u − v‖, so that a pair that met gives q = 0, not NaN


def quotients_from(out: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """The quotients from the outputs ``out = f(cat[u, v])`` (K, 2P, *out) → (K, P)."""
    out_u, out_v = _halves(out)
    num = flat_norm(out_u - out_v, 2)
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
    q, g, _, _ = _value_and_grad(forward, torch.cat([u.detach(), v.detach()], dim=1), power)
    gu, gv = _halves(g)
    return q, gu, gv


def _halves(w: Tensor) -> tuple[Tensor, Tensor]:
    """The u and v halves (views) of cat[u, v] (K, 2P, ...).

    One chunk, not two slices: one call, and in a backward one concatenation, where each
    slice's backward zeroes a full-size tensor and copies into it, and the two are added.
    """
    u, v = w.chunk(2, dim=1)
    return u, v


def _value(forward: Forward, w: Tensor, affine: AffineFirst | None = None,
           z: Tensor | None = None, low: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """The quotients of the pairs w = cat[u, v] and their distances ‖u − v‖, no graph.

    With ``affine``, ``affine.rest`` runs on ``z``, the first layer's outputs at w
    (``affine_first``), computed by ``pairs_first(affine, w, low)`` where not given.
    """
    with torch.no_grad():
        u, v = _halves(w)
        diff = u - v
        if affine is not None and z is None:
            z = pairs_first(affine, w, low, diff)
        out_u, out_v = _halves(forward(w) if affine is None else affine.rest(z))
        dist = flat_norm(diff, 2)
        return flat_norm(out_u - out_v, 2) / dist.clamp_min(_TINY), dist


def _value_and_grad(forward: Forward, w: Tensor, power: int,
                    affine: AffineFirst | None = None, z: Tensor | None = None,
                    low: torch.dtype | None = None,
                    ) -> tuple[Tensor, Tensor, Tensor, Linearization | None]:
    """q, ∇(q^p) (in w's layout), ‖u − v‖ for the pairs w = cat[u, v] and, with ``affine``,
    their :class:`Linearization`: one forward, one backward to the inputs.

    Autograd differentiates the numerator n = ‖f(u) − f(v)‖ only; the distance
    d = ‖u − v‖ enters in closed form (hand-written: autograd's backward through the norm
    and the difference costs several pair-sized passes more). With q = n / d, c = p·q^(p−1)/d:

        ∇_u q^p = c·∇_u n − c·q·(u − v)/d,   ∇_v q^p = c·∇_v n + c·q·(u − v)/d,

    and where d is below the floor, d is that constant floor (no second term). With
    ``affine`` the backward stops at the first layer's output (δ = c·∂n/∂z) and
    ∇n = Wᵀδ is one product; ``z``: that output at w where known (else ``pairs_first``).
    ``low``: the products with W in that dtype (``affine_first.low_matmul``), else exact.
    """
    u, v = _halves(w.detach())
    diff = u - v
    if affine is None:  # differentiate from the inputs
        leaf, rest = w.detach(), forward
    else:  # from the first layer's output
        leaf = pairs_first(affine, w, low, diff) if z is None else z
        leaf, rest = leaf.detach(), affine.rest
    leaf.requires_grad_(True)
    with torch.enable_grad():
        out_u, out_v = _halves(rest(leaf))
        num = flat_norm(out_u - out_v, 2)
    dist = flat_norm(diff, 2)
    d = dist.clamp_min(_TINY)
    q = num.detach() / d
    c = d.reciprocal() if power == 1 else power * q ** (power - 1) / d  # p = 1: one kernel
    coef = torch.where(dist > _TINY, c * q / d, 0.0)
    (grad,) = torch.autograd.grad(num, leaf, grad_outputs=c)
    if affine is None:
        n_grad = grad.contiguous()  # autograd's result, no graph kept: ours to write over
        lin = None
    else:  # ∇n = Wᵀδ (in a low dtype widened first: torch's addcmul on mixed dtypes takes
        # a slow path, measured 0.23 ms against 0.03 ms on 500 pairs of 784 pixels)
        n_grad = low_matmul(grad, affine.weight(), low).view(w.shape)
        lin = Linearization(leaf.detach(), grad, coef)
    g_u, g_v = _halves(n_grad)
    coef_b = broadcast_to(coef, diff)
    g_u.addcmul_(coef_b, diff, value=-1)
    g_v.addcmul_(coef_b, diff)
    return q, n_grad, dist, lin


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
    """A pair set: pairs u, v (K, P, *in), step sizes τ and quotients q (K, P), and the
    gradient that gives the next proposal (None once no step follows).

    ``uv`` is the pairs as one tensor cat[u, v] (K, 2P, *in), whose halves u and v are
    (views), where :func:`ascend` made the state: the next ascent evaluates it as it is,
    without copying the pairs into one forward's input. A state built from separate u and v
    has none. ``g`` is ∇(q^power) in the same layout: ∇_u in the first P rows, ∇_v in the
    last P. ``winner`` is for CLIP's descent step: (index (K,), cat[u_w, v_w] (K, 2, *in)).
    ``lin``: the :class:`Linearization` that goes with ``g`` where the ascent splits off the
    model's first layer (None: it does not).
    """

    u: Tensor
    v: Tensor
    tau: Tensor
    q: Tensor | None = None
    g: Tensor | None = None
    winner: tuple[Tensor, Tensor] | None = None
    uv: Tensor | None = None
    lin: Linearization | None = None


def joint(pairs: PairState) -> Tensor:
    """The pairs as one tensor cat[u, v] (K, 2P, *in): the state's own ``uv`` if it has one."""
    if pairs.uv is not None:
        return pairs.uv
    return torch.cat([pairs.u.detach(), pairs.v.detach()], dim=1)


def _state(w: Tensor, tau: Tensor, q: Tensor, g: Tensor | None = None,
           lin: Linearization | None = None) -> PairState:
    u, v = _halves(w)
    return PairState(u, v, tau, q, g, uv=w, lin=lin)


def step_sizes(pairs: PairState, rule: AscentRule) -> Tensor:
    """The step s per pair (K, P): τ, or for ``step="normalized"`` τ·‖u − v‖ / ‖(g_u, g_v)‖."""
    s = pairs.tau
    if rule.step == "normalized":
        (gu, gv), (u, v) = _halves(pairs.g), _halves(joint(pairs))
        gnorm = (flat_norm(gu, 2) ** 2 + flat_norm(gv, 2) ** 2).sqrt()
        s = s * flat_norm(u - v, 2) / gnorm.clamp_min(1e-30)
    return s


def propose(pairs: PairState, rule: AscentRule, s: Tensor | None = None,
            reuse_g: bool = False) -> Tensor:
    """The proposal cat[u', v'] (K, 2P, *in): u' = Π(u + s·g_u), v' = Π(v + s·g_v)
    (s: ``step_sizes`` unless given). A new tensor, and the state is not changed; with
    ``reuse_g`` the proposal is written over the state's gradient ``g`` (for a gradient
    that nothing reads afterwards: no new pair-sized buffer)."""
    w, g = joint(pairs), pairs.g
    s = step_sizes(pairs, rule) if s is None else s
    w_new = torch.addcmul(w, broadcast_to(torch.cat([s, s], dim=1), w), g,
                          out=g if reuse_g else None)
    if rule.clamp is not None:
        w_new.clamp_(*rule.clamp)
    return w_new


def accept(pairs: PairState, w_new: Tensor, q_new: Tensor, dist_new: Tensor,
           g_new: Tensor | None, rule: AscentRule,
           lin_new: Linearization | None = None) -> PairState:
    """Keep the proposal where q rose (τ ×= factor), else the old pair (τ ÷= factor).

    ``w_new``, ``q_new``, ``dist_new``, ``g_new``: the proposal cat[u', v'], its quotients,
    its distances ‖u' − v'‖ and gradients (None: no step follows; the result has none).
    The result is written into ``w_new`` and ``g_new`` (the caller's fresh proposal): only the
    rejected pairs' rows are copied back, no new pair-sized tensor. ``lin_new``: the
    proposal's :class:`Linearization`, kept with ``g`` (the result has one where both it and
    the state have one).
    """
    rtol = torch.finfo(q_new.dtype).eps ** 0.5 if rule.rtol is None else rule.rtol
    rises = q_new > pairs.q * (1 + rtol)
    # q >= 0 or NaN, so "< inf" is isfinite in one kernel (torch's isfinite is four)
    ok = rises & (q_new < math.inf)
    if rule.min_distance > 0:
        ok &= dist_new >= rule.min_distance
    ok2 = torch.cat([ok, ok], dim=1)
    a = broadcast_to(ok2, w_new)
    w = torch.where(a, w_new, joint(pairs), out=w_new)
    g = None if g_new is None else torch.where(a, g_new, pairs.g, out=g_new)
    tau = torch.where(ok, pairs.tau * rule.factor, pairs.tau / rule.factor)
    lin = None
    if g is not None and lin_new is not None and pairs.lin is not None:
        a1 = ok2[..., None]
        lin = Linearization(torch.where(a1, lin_new.z, pairs.lin.z),
                            torch.where(a1, lin_new.delta, pairs.lin.delta),
                            torch.where(ok, lin_new.coef, pairs.lin.coef))
    return _state(w, tau, torch.where(ok, q_new, pairs.q), g, lin)


def ascend(forward: Forward, pairs: PairState, steps: int,
           rule: AscentRule = AscentRule(),  # noqa: B008 (frozen: a safe default)
           affine: AffineFirst | None = None, low: torch.dtype | None = None) -> PairState:
    """``steps`` ascent steps on the quotients (or on q^power) with per-pair step sizes.

    Cost: one forward and backward over the pairs to evaluate them at the current f, then
    per step a forward over the proposals, with a backward for the next step's gradient on
    every step but the last (with ``steps=0``, one forward: the evaluation). The result
    holds the pairs' quotients at the current f, and no gradient. ``pairs`` is not changed.

    ``affine``: the forward's first affine layer split off (``clipkit.core.affine_first``);
    the proposals' first-layer outputs then come from the gradient's linearization (n₁²
    per pair input instead of n₀·n₁, and G = W Wᵀ once), the same values up to rounding.
    Used where that is less work, steps·2P·(n₀ − n₁) > n₀·n₁, and the pairs are not
    clamped (a clamp is not affine).

    ``low`` (an approximation, needs ``affine``): every product with the first layer's
    weight W in that dtype, e.g. torch.bfloat16 (``affine_first.low_matmul``,
    ``pairs_first``), the first layer split off whether or not the linearization is used;
    the rest of the model runs in its own dtype.
    """
    w = joint(pairs)
    if steps == 0:  # the values alone
        return _state(w, pairs.tau, _value(forward, w)[0])
    if low is not None and affine is None:
        raise ValueError("ascend: a low precision (low=...) needs the model's first layer "
                         "split off (affine=...)")
    gram = None
    if affine is not None and rule.clamp is None:
        weight = affine.weight()
        n1, n0 = weight.shape[1:]
        if steps * w.shape[1] * (n0 - n1) > n0 * n1:
            gram = low_matmul(weight, weight.transpose(1, 2), low)
    if gram is None and low is None:
        affine = None
    q, g, _, lin = _value_and_grad(forward, w, rule.power, affine, low=low)
    if gram is None:
        lin = None
    pairs = _state(w, pairs.tau, q, g, lin)
    for i in range(steps):
        s = step_sizes(pairs, rule)
        z_new = None if pairs.lin is None else pairs.lin.at(gram, s, low)
        # the gradient's last use is this step's proposal (a rejected pair keeps it only
        # for a next step): write the last proposal over it
        w_new = propose(pairs, rule, s, reuse_g=i == steps - 1)
        if i < steps - 1:
            q_new, g_new, dist_new, lin_new = _value_and_grad(forward, w_new, rule.power,
                                                              affine, z_new, low)
            if gram is None:
                lin_new = None
        else:  # the last step's gradient would only serve a step that does not come
            (q_new, dist_new), g_new, lin_new = (_value(forward, w_new, affine, z_new, low),
                                                 None, None)
        pairs = accept(pairs, w_new, q_new, dist_new, g_new, rule, lin_new=lin_new)
    pairs.g = pairs.lin = None
    return pairs


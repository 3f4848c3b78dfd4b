"""Slope intervals of activations on intervals, and per-neuron slopes valid on an l2 ball.

What the local certificates (``sdp.local_upper_bound``, ``clipkit.analysis.certify``) see:
over an l2 ball B(x, eps), each neuron's pre-activation stays in an interval, found by
interval arithmetic and, tighter, by the ellipsoids dh_k^T X_k dh_k <= ||dx||^2 that the
layer-by-layer (ECLipsE) Schur complements certify (the idea of Xu & Sivaranjani's local
ECLipsE variant); the activation's slope range over that interval replaces its global
slope interval.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from clipkit.analysis.lipschitz.chain import MLPChain
from clipkit.analysis.lipschitz.lmi import U
from clipkit.analysis.lipschitz.structure import activation_slopes
from clipkit.core.utils import one_thread

__all__ = ["global_slopes", "local_slopes", "slope_range"]


def slope_range(module: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Per neuron, an interval containing every difference quotient of the activation on [lo, hi].

    By the mean value theorem these are the derivative's range on [lo, hi] (one-sided
    derivatives at kinks). Exact formulas for ReLU, LeakyReLU, Hardtanh/ReLU6 (piecewise
    constant slopes), Sigmoid and Tanh (derivatives even and decreasing in |z|); any other
    activation keeps its global slope interval. The smooth ones are widened by a relative
    1e-12 for the rounding of their float64 evaluation (in e^-|z| form, accurate in the tails).
    """
    glo, ghi = activation_slopes(module)  # type: ignore[misc]
    a = torch.full_like(lo, glo)
    b = torch.full_like(lo, ghi)
    if isinstance(module, nn.ReLU | nn.LeakyReLU):
        neg = float(module.negative_slope) if isinstance(module, nn.LeakyReLU) else 0.0
        for t, s in ((hi < 0, neg), (lo > 0, 1.0)):  # strictly on one side of the kink
            a = torch.where(t, s, a)
            b = torch.where(t, s, b)
        return a, b
    if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        lo_k, hi_k = float(module.min_val), float(module.max_val)
        inside = (lo > lo_k) & (hi < hi_k)
        outside = (hi < lo_k) | (lo > hi_k)
        a = torch.where(inside, 1.0, torch.where(outside, 0.0, a))
        b = torch.where(inside, 1.0, torch.where(outside, 0.0, b))
        return a, b
    if isinstance(module, nn.Sigmoid | nn.Tanh):
        def deriv(t: Tensor) -> Tensor:  # t = |z|; e^-t forms keep the tails' relative accuracy
            if isinstance(module, nn.Sigmoid):  # s(1 - s) = e^-t / (1 + e^-t)^2
                e = torch.exp(-t)
                return e / (1 + e) ** 2
            e = torch.exp(-2 * t)  # 1 - tanh^2 = 4 e^-2t / (1 + e^-2t)^2
            return 4 * e / (1 + e) ** 2

        near = torch.minimum(lo.abs(), hi.abs())
        near = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(near), near)
        far = torch.maximum(lo.abs(), hi.abs())
        a = (deriv(far) * (1 - 1e-12)).clamp(glo, ghi)
        # + 1e-300: exp underflows to 0 beyond |z| ~ 745, where the true value is positive
        b = (deriv(near) * (1 + 1e-12) + 1e-300).clamp(glo, ghi)
        return a, b
    return a, b


def global_slopes(chain: MLPChain) -> list[tuple[Tensor, Tensor]]:
    """Per-neuron slope intervals valid on all of R^n: the global ones, tightened where a
    bounded activation bounds the next layer's inputs.

    Interval arithmetic from an unbounded input: a pre-activation that depends on an
    unbounded value keeps the activation's global interval; after a bounded activation
    (sigmoid in [0, 1], tanh in [-1, 1], Hardtanh) the next pre-activations lie in
    [c - r, c + r] with c = A mid + b, r = |A| rad, and their slopes in the activation's range
    there (``slope_range``). E.g. a sigmoid MLP's second layer: z_2 = W_1 s(z_1) + b_1 is
    bounded although z_1 is not, and its neurons whose z_2 stays away from 0 can not take the
    sigmoid's top slope 1/4 anywhere. Only the upper ends are tightened: the lower ends stay
    the activation's global lower slope, because raising them loosened the closed-form
    (ECLipsE) multipliers on small sigmoid nets and gained nothing on 784-200-80-10 MLPs
    (the LipSDP bound moved by 1e-6 relative). Widened for rounding as in ``local_slopes``.
    """
    with one_thread():
        out = []
        n0 = chain.weights[0].shape[1]
        h_lo = torch.full((n0,), -math.inf, dtype=torch.float64)
        h_hi = torch.full((n0,), math.inf, dtype=torch.float64)
        for k, A in enumerate(chain.weights[:-1]):
            finite = torch.isfinite(h_lo) & torch.isfinite(h_hi)
            # rows touching an unbounded input are unbounded (avoids inf * 0 = nan)
            free = (A[:, ~finite] != 0).any(1)
            mid = torch.where(finite, (h_hi + h_lo) / 2, 0.0)
            rad = torch.where(finite, (h_hi - h_lo) / 2, 0.0)
            c, r = A @ mid + chain.biases[k], A.abs() @ rad
            slack = 1e-12 * (c.abs() + r + A.abs() @ mid.abs()) + 1e-300
            lo = torch.where(free, -math.inf, c - r - slack)
            hi = torch.where(free, math.inf, c + r + slack)
            act = chain.acts[k]
            a, b = slope_range(act, lo, hi)
            glo, _ = activation_slopes(act)  # type: ignore[misc]
            out.append((torch.full_like(a, glo), b))
            h_lo, h_hi = _value_range(act, lo, hi)
        return out


def _value_range(act: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """An interval containing act(z) for z in [lo, hi], widened by a relative 1e-12 plus
    1e-300 for rounding: [act(lo), act(hi)] for the supported monotone activations (lower
    slope >= 0; infinite ends stay infinite), else all of R."""
    glo, _ = activation_slopes(act)  # type: ignore[misc]
    if glo < 0:
        return torch.full_like(lo, -math.inf), torch.full_like(hi, math.inf)
    h_lo, h_hi = act(lo), act(hi)
    vs = 1e-12 * (h_lo.abs() + h_hi.abs()).nan_to_num(posinf=0.0) + 1e-300
    return h_lo - vs, h_hi + vs


def local_slopes(chain: MLPChain, x: Tensor, eps: float) -> list[tuple[Tensor, Tensor]]:
    """Per-neuron slope intervals valid on the l2 ball B(x, eps) (x: one flattened input).

    Layer by layer: the pre-activation z_k(x') for x' in the ball lies within
    z_k(x) +- eps r_k, r_k = sqrt(diag(A X^{-1} A^T)) from the certified ellipsoid
    dh^T X dh <= ||dx||^2 of the previous layers (X = I at the input, so r_1 is the row norms
    of A_0; X from the ECLipsE-Fast Schur complements with these slopes), and also within
    the interval-arithmetic image of the previous layer's value interval; the narrower of
    the two (their intersection) is used. Widened by a relative 1e-12 plus 1e-300 for
    rounding. The slope range of the activation over the interval (``slope_range``) follows.
    """
    with one_thread():
        return _local_slopes(chain, x, eps)


def _local_slopes(chain: MLPChain, x: Tensor, eps: float) -> list[tuple[Tensor, Tensor]]:
    x = x.reshape(-1).to(torch.float64)
    zs = chain.forward(x[None])
    X = torch.eye(x.numel(), dtype=torch.float64)
    h_lo, h_hi = x - eps, x + eps  # the ball's bounding box
    out = []
    for k, A in enumerate(chain.weights[:-1]):
        zc = zs[k][0]
        L = torch.linalg.cholesky(X)
        B = torch.linalg.solve_triangular(L, A.T, upper=False)
        r_ell = eps * B.pow(2).sum(0).sqrt()
        mid, rad = (h_hi + h_lo) / 2, (h_hi - h_lo) / 2
        ia_c = A @ mid + chain.biases[k]
        ia_r = A.abs() @ rad
        lo = torch.maximum(zc - r_ell, ia_c - ia_r)
        hi = torch.minimum(zc + r_ell, ia_c + ia_r)
        slack = 1e-12 * (zc.abs() + r_ell + A.abs() @ (h_hi.abs() + h_lo.abs())) + 1e-300
        lo, hi = lo - slack, hi + slack
        act = chain.acts[k]
        a, b = slope_range(act, lo, hi)
        out.append((a, b))
        h_lo, h_hi = _value_range(act, lo, hi)
        # the next ellipsoid: one ECLipsE-Fast stage with these slopes
        m, p = (a + b) / 2, a * b
        Bm = torch.linalg.solve_triangular(L, (m[:, None] * A).T, upper=False)
        kmax = float(torch.linalg.eigvalsh(Bm.T @ Bm)[-1])
        neg = (-p).clamp_min(0)
        if bool((neg > 0).any()):
            pn = float(torch.linalg.eigvalsh(A.T @ (neg[:, None] * A))[-1])
            xmin = float(torch.linalg.eigvalsh(X)[0])
            lk = min(1 / (4 * kmax) if kmax > 0 else math.inf, xmin / (2 * pn))
        else:
            lk = 1 / (2 * kmax) if kmax > 0 else 1.0
        Xp = X + A.T @ ((lk * p)[:, None] * A)
        Lp = torch.linalg.cholesky((Xp + Xp.T) / 2)
        Bm = torch.linalg.solve_triangular(Lp, (m[:, None] * A).T, upper=False)
        BtB = Bm.T @ Bm
        X = lk * torch.eye(A.shape[0], dtype=torch.float64) - lk * lk * BtB
        # shrink by a bound on the rounding of this Schur complement, so that the computed
        # X never claims a smaller ellipsoid than the exact one (X >= lk / 2 I, so it stays
        # well conditioned)
        delta = 16 * (A.shape[1] + 2) * U * (lk + lk * lk * float(torch.diagonal(BtB).sum()))
        X = (X + X.T) / 2 - delta * torch.eye(A.shape[0], dtype=torch.float64)
    return out

"""LipSDP-neuron multipliers by L-BFGS on the Schur-complement eigenvalue.

rho*(lam), the smallest rho for which M(rho, lam) >= 0 (``lmi``), is the largest eigenvalue of
a Schur complement (``lmi.schur_eigs``, one Cholesky factorisation per hidden layer); it is
convex in lam and is minimised here over log(lam). Hand-written because the LMI of the
784-200-80-10 MLP (480 x 480 after the input reduction) is beyond the SDP solvers in the
dependencies: SCS (cvxpy) took 3-5 min on 2 cores and CLARABEL (cvxpy) ran out of memory
(36 GB for the dense Newton system of a 480-dim PSD cone); the L-BFGS optimum matched SCS's
to 1e-4 relative on both benchmark networks, in 5-15 s. Whatever the optimiser returns is
only a candidate: ``lmi.verify`` decides whether it certifies anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from clipkit.analysis.lipschitz.lmi import LMIProblem, schur_eigs

__all__ = ["SHARPNESS", "lbfgs_minimise", "lbfgs_multipliers"]

#: the log-sum-exp sharpness of the successive stages (relative to rho*)
SHARPNESS = (100.0, 1000.0, 10000.0)


def lbfgs_minimise(fg: Callable[[Tensor], tuple[float, Tensor] | None], x: Tensor,
                   iters: int, history: int = 20) -> tuple[Tensor, int, bool]:
    """L-BFGS (two-loop recursion) with a backtracking Armijo line search.

    ``fg(x)`` returns (f, grad) or None outside the domain; a trial point outside is halved
    back (torch.optim.LBFGS's strong Wolfe search can not recover from such points, which is
    why this is hand-written). Returns (x, evaluations, converged): converged when f stopped
    changing (relative 1e-12) or no step along the search direction decreases it.
    """
    cur = fg(x)
    evals = 1
    if cur is None:
        return x, evals, False
    f, g = cur
    S: list[Tensor] = []
    Y: list[Tensor] = []
    for _ in range(iters):
        q = g.clone()
        alphas = []
        for s_, y_ in zip(reversed(S), reversed(Y), strict=True):
            a_ = float(s_ @ q) / float(y_ @ s_)
            alphas.append(a_)
            q -= a_ * y_
        if S:
            q *= float(S[-1] @ Y[-1]) / float(Y[-1] @ Y[-1])
        else:
            q /= max(float(g.abs().max()), 1e-300)  # first step: at most 1 in each log-multiplier
        for (s_, y_), a_ in zip(zip(S, Y, strict=True), reversed(alphas), strict=True):
            q += (a_ - float(y_ @ q) / float(y_ @ s_)) * s_
        d = -q
        slope = float(g @ d)
        if not slope < 0:
            d, slope = -g, -float(g @ g)
            S.clear()
            Y.clear()
        step = 1.0
        while True:
            new = fg(x + step * d)
            evals += 1
            if new is not None and new[0] <= f + 1e-4 * step * slope:
                break
            step /= 2
            if step < 1e-12:
                return x, evals, True
        x1, (f1, g1) = x + step * d, new
        s_, y_ = x1 - x, g1 - g
        if float(s_ @ y_) > 1e-12 * float(s_.norm() * y_.norm()):
            S.append(s_)
            Y.append(y_)
            if len(S) > history:
                S.pop(0)
                Y.pop(0)
        done = abs(f - f1) <= 1e-12 * abs(f1)
        x, f, g = x1, f1, g1
        if done:
            return x, evals, True
    return x, evals, False


def lbfgs_multipliers(prob: LMIProblem, lams: list[Tensor], iters: int,
                      sharpness: Sequence[float]) -> tuple[list[Tensor], int, str]:
    """Minimise rho*(lam) over lam = exp(theta) by L-BFGS on a smoothed maximum eigenvalue.

    rho*(lam) is convex in lam but not smooth (its largest eigenvalue is multiple at the
    optimum), so plain gradient steps stall; the log-sum-exp smoothing
    (s / beta) log sum_i exp(beta mu_i / s), s = rho* at the stage's start, is minimised for
    increasing beta (``sharpness``), ``iters`` L-BFGS iterations each. Any lam is turned into
    a bound by ``lmi.verify``; the optimiser only decides how tight. Returns (lam, evaluations,
    status): "converged" when the last stage converged (then within about log(n) / beta of
    rho*'s minimum, relative), else "iteration limit".
    """
    sizes = [len(v) for v in lams]
    theta = torch.log(torch.cat(lams))
    lo, hi = theta - 30, theta + 30
    evals = 0
    for beta in sharpness:
        with torch.no_grad():
            ev = schur_eigs(prob, list(torch.exp(theta).split(sizes)))
        if ev is None:
            return list(torch.exp(theta).split(sizes)), evals, "left the feasible set"
        scale = max(float(ev[-1]), 1e-300)

        def fg(th: Tensor, beta: float = beta, scale: float = scale
               ) -> tuple[float, Tensor] | None:
            th = th.detach().requires_grad_(True)
            # multipliers stay within e^+-30 of the start: irrelevant neurons' multipliers
            # would otherwise drift to subnormal numbers
            lam = torch.exp(torch.minimum(torch.maximum(th, lo), hi))
            ev = schur_eigs(prob, list(lam.split(sizes)))
            if ev is None or not bool(torch.isfinite(ev).all()):
                return None
            f = scale / beta * torch.logsumexp(beta * ev / scale, 0)
            (g,) = torch.autograd.grad(f, th)
            return float(f.detach()), g

        theta, k, converged = lbfgs_minimise(fg, theta, iters)
        theta = torch.minimum(torch.maximum(theta, lo), hi)
        evals += k
    status = "converged" if converged else "iteration limit"
    return list(torch.exp(theta).split(sizes)), evals, status

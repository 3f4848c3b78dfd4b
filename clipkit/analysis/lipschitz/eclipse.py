"""Closed-form LipSDP multipliers, layer by layer (ECLipsE-Fast, any slope intervals).

Xu & Sivaranjani, "ECLipsE: efficient compositional Lipschitz constant estimation for deep
neural networks", NeurIPS 2024: the LipSDP-neuron matrix (``lmi``) is made positive
semidefinite one hidden layer at a time, each layer's multiplier chosen in closed form from
the Schur complement X_k left by the layers before it (an ellipsoid dh_k^T X_k dh_k <=
||dx||^2 that the certified differences stay in). No solver: looser than the optimised
multipliers of ``sdp``, but a feasible start for them and a fallback that always verifies.
Generalised here from ReLU-like [0, 1] to any interval [a, b] (p = a b may be negative).
"""

from __future__ import annotations

import torch
from torch import Tensor

from clipkit.analysis.lipschitz.lmi import LMIProblem

__all__ = ["eclipse_multipliers", "eclipse_stage"]


def eclipse_stage(X: Tensor, A: Tensor, m: Tensor, p: Tensor, rule: str
                  ) -> tuple[Tensor, Tensor]:
    """One layer of the closed-form multipliers: (lam, X_next) from the ellipsoid matrix X.

    The Schur complement of the stage is X_next = Lam - Lam K' Lam with
    K' = diag(m) A X'^{-1} A^T diag(m), X' = X + A^T diag(lam p) A. ``"uniform"``
    (ECLipsE-Fast): lam = 1 / (2 lambda_max(K)); ``"gershgorin"``: lam_i = 1 / (2 sum_j |K_ij|),
    since K <= diag(sum_j |K_ij|) (scaled diagonal dominance), so Lam^{-1} - K >= Lam^{-1} / 2;
    it follows a neuron's own slope range (a saturated neuron gets a large multiplier). Either
    way X_next >= Lam / 2 when p >= 0 (then X' >= X, K' <= K); when some p < 0, lam is quartered
    and scaled so that X' >= X / 2 (K' <= 2K) and the same holds.
    """
    L = torch.linalg.cholesky(X)
    B = torch.linalg.solve_triangular(L, (m[:, None] * A).T, upper=False)
    K = B.T @ B
    neg = (-p).clamp_min(0)
    q = 4.0 if bool((neg > 0).any()) else 2.0
    kmax = float(torch.linalg.eigvalsh(K)[-1])
    lam = torch.full((A.shape[0],), 1 / (q * kmax) if kmax > 0 else 1.0, dtype=torch.float64)
    if rule == "gershgorin":
        # at most 1e8 times the uniform value: a smaller multiplier keeps Lam^{-1} >= K
        # (still valid), and it keeps the scales of M within float64's comfortable range
        lam = torch.minimum(1 / (q * K.abs().sum(1)), 1e8 * lam)
    if bool((neg > 0).any()):
        C = torch.linalg.solve_triangular(L, A.T, upper=False)  # X^{-1/2} A^T
        c = float(torch.linalg.eigvalsh(C @ ((lam * neg)[:, None] * C.T))[-1])
        if c > 0.5:
            lam = lam * (0.5 / c)
    Xp = X + A.T @ ((lam * p)[:, None] * A)
    L = torch.linalg.cholesky((Xp + Xp.T) / 2)
    B = torch.linalg.solve_triangular(L, ((lam * m)[:, None] * A).T, upper=False)
    Xn = torch.diag(lam) - B.T @ B
    return lam, (Xn + Xn.T) / 2


def eclipse_multipliers(prob: LMIProblem, rule: str = "uniform"
                        ) -> tuple[float, list[Tensor]]:
    """Closed-form multipliers, layer by layer (ECLipsE-Fast, any slope intervals).

    With rho = 1, X_0 = I and X_k from ``eclipse_stage``, M(rho = 1, lam) restricted to the
    input and hidden blocks is >= 0 with the last Schur complement X_K; so M(s, s lam) >= 0 for
    s = lambda_max(X_K^{-1/2} W^T W X_K^{-1/2}) (the output block). Returns (s, s lam).
    """
    m, p = prob.mp()
    X = torch.eye(prob.sizes[0], dtype=torch.float64)
    lams = []
    for k, A in enumerate(prob.maps):
        lam, X = eclipse_stage(X, A, m[k], p[k], rule)
        lams.append(lam)
    L = torch.linalg.cholesky(X)
    B = torch.linalg.solve_triangular(L, prob.out.T, upper=False)
    s = float(torch.linalg.eigvalsh(B.T @ B)[-1])
    return s, [s * lam for lam in lams]

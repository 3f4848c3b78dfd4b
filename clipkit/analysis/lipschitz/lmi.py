"""The LipSDP-neuron linear matrix inequality of an MLP chain, and its float64 verification.

For f = A_K s_K ... s_1 A_0 (``chain``) with each neuron's difference quotient in a slope
interval [a_i, b_i], every neuron obeys the quadratic constraint
(dh_i - a_i dz_i)(b_i dz_i - dh_i) >= 0 between the differences of its input z and output h
(Fazlyab et al., NeurIPS 2019, LipSDP-neuron). If rho >= 0 and multipliers lam_i >= 0 make

    M(rho, lam) = rho E_x - E_K^T W^T W E_K - sum_i lam_i Q_i  >= 0   (positive semidefinite)

(Q_i the quadratic form of neuron i's constraint in (dx, dh_1, ..., dh_K), W the output
layer), then ||W dh_K||^2 <= rho ||dx||^2 for every admissible difference: Lip(f) <= sqrt(rho).
M is block tridiagonal, of size n_0 + n_1 + ... + n_K (:class:`LMIProblem`).

:func:`verify` turns multipliers from any source into a certificate or a
:class:`CertificateError`: rho is recomputed for them (:func:`schur_eigs`), raised by a
relative 1e-9 (then 1e-7, 1e-5), and M(rho, lam) is proved positive semidefinite in float64
by one Cholesky factorisation with an a priori rounding margin (:func:`is_psd`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from clipkit.analysis.lipschitz.chain import MLPChain
from clipkit.analysis.lipschitz.upper import ROUNDING_SLACK

__all__ = [
    "U",
    "Certificate",
    "CertificateError",
    "LMIProblem",
    "drop_dead",
    "is_psd",
    "problem_of",
    "reduced",
    "schur_eigs",
    "verify",
    "widen",
]

U = 2.0**-53  # unit roundoff of float64


class CertificateError(RuntimeError):
    """No verified certificate: the solver failed or its multipliers did not verify.

    ``status`` names what happened (a solver's status, or "verification failed").
    """

    def __init__(self, message: str, status: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Certificate:
    """A verified bound: Lip <= value = sqrt(rho), with the multipliers that prove it."""

    value: float
    rho: float
    multipliers: tuple[Tensor, ...]
    mixed: float  # weight of the closed-form point mixed in to verify (0: none needed)


@dataclass
class LMIProblem:
    """The LMI data: blocks (input, hidden layers), the maps into each hidden layer, slopes."""

    maps: list[Tensor]  # maps[k]: block k -> hidden layer k+1 (maps[0] may be reduced)
    out: Tensor  # output map W (q x n_K)
    alpha: list[Tensor]  # per neuron slope interval, per hidden layer
    beta: list[Tensor]

    @property
    def sizes(self) -> list[int]:
        """Block sizes: the input's (n_0, or n_1 when reduced), then each hidden layer's."""
        return [self.maps[0].shape[1]] + [a.shape[0] for a in self.maps]

    @property
    def offsets(self) -> list[int]:
        return [0, *np.cumsum(self.sizes).tolist()]

    def mp(self) -> tuple[list[Tensor], list[Tensor]]:
        """Per layer m = (a + b) / 2 and p = a b of the slope intervals."""
        m = [(a + b) / 2 for a, b in zip(self.alpha, self.beta, strict=True)]
        p = [a * b for a, b in zip(self.alpha, self.beta, strict=True)]
        return m, p

    def matrix(self, rho: float | Tensor, lams: list[Tensor], absolute: bool = False) -> Tensor:
        """M(rho, lam); with ``absolute``, the same sums of absolute values (rounding bound)."""
        off, n = self.offsets, self.offsets[-1]
        M = torch.zeros(n, n, dtype=torch.float64)
        m, p = self.mp()
        ab = (lambda t: t.abs()) if absolute else (lambda t: t)
        M[: off[1], : off[1]] += torch.eye(off[1], dtype=torch.float64) * rho
        for k, A in enumerate(self.maps):
            i0, i1, j0, j1 = off[k], off[k + 1], off[k + 1], off[k + 2]
            lam = lams[k]
            if bool((p[k] != 0).any()):
                M[i0:i1, i0:i1] += ab(A).T @ (ab(lam * p[k])[:, None] * ab(A))
            C = -(lam * m[k])[:, None] * A
            M[j0:j1, i0:i1] += ab(C)
            M[i0:i1, j0:j1] += ab(C).T
            M[j0:j1, j0:j1] += torch.diag(lam)
        W = self.out
        if absolute:
            M[off[-2]:, off[-2]:] += W.abs().T @ W.abs()
        else:
            M[off[-2]:, off[-2]:] -= W.T @ W
        return M


def problem_of(chain: MLPChain, alpha: list[Tensor], beta: list[Tensor],
               out: Tensor) -> LMIProblem:
    """The LMI of ``chain`` with per-neuron slopes [alpha, beta] and output map ``out``."""
    return LMIProblem(list(chain.weights[:-1]), out, alpha, beta)


def drop_dead(prob: LMIProblem) -> LMIProblem:
    """Remove neurons whose slope interval is {0}: their output difference is exactly 0."""
    maps, alpha, beta = list(prob.maps), list(prob.alpha), list(prob.beta)
    out = prob.out
    for k in range(len(maps)):
        keep = ~((alpha[k] == 0) & (beta[k] == 0))
        if bool(keep.all()):
            continue
        if not bool(keep.any()):  # the whole layer is constant: keep one neuron, slope {0}
            keep[0] = True
        maps[k], alpha[k], beta[k] = maps[k][keep], alpha[k][keep], beta[k][keep]
        if k + 1 < len(maps):
            maps[k + 1] = maps[k + 1][:, keep]
        else:
            out = out[:, keep]
    return LMIProblem(maps, out, alpha, beta)


def widen(alpha: Tensor, beta: Tensor, rel: float) -> tuple[Tensor, Tensor]:
    """Give every interval a width >= rel * max(|a|, |b|) (a point interval makes the optimal
    multiplier infinite); a wider interval only weakens the constraint, so stays valid."""
    scale = torch.maximum(alpha.abs(), beta.abs())
    need = (rel * scale - (beta - alpha)).clamp_min(0) / 2
    return alpha - need, beta + need



def schur_eigs(prob: LMIProblem, lams: list[Tensor]) -> Tensor | None:
    """Eigenvalues of the matrix whose largest one is rho*(lam); None when infeasible.

    Backward block elimination of the hidden-layer part of M (block tridiagonal):
    S_K = diag(lam_K) - W^T W, S_k = diag(lam_k) + A_k^T diag(lam_{k+1} p_{k+1}) A_k
    - C_k^T S_{k+1}^{-1} C_k with C_k = diag(lam_{k+1} m_{k+1}) A_k; all must be positive
    definite, and rho*(lam) = lambda_max(C_0^T S_1^{-1} C_0 - A_0^T diag(lam_1 p_1) A_0).
    Differentiable (torch autograd).
    """
    m, p = prob.mp()
    A = prob.maps
    S = torch.diag(lams[-1]) - prob.out.T @ prob.out
    for k in range(len(A) - 1, -1, -1):
        L, info = torch.linalg.cholesky_ex(S)
        if int(info) != 0:
            return None
        C = (lams[k] * m[k])[:, None] * A[k]
        B = torch.linalg.solve_triangular(L, C, upper=False)
        S = B.T @ B
        if bool((p[k] != 0).any()):
            S = S - A[k].T @ ((lams[k] * p[k])[:, None] * A[k])
        if k > 0:
            S = torch.diag(lams[k - 1]) - S
    return torch.linalg.eigvalsh((S + S.T) / 2)


# ----------------------------------------------------------------------------- verification


def is_psd(M: Tensor, Mabs: Tensor, terms: int) -> bool:
    """Proves M >= 0 (M as exactly defined by the float64 data) by one Cholesky factorisation.

    D = diag(2^-e_i) with 2^-2e_i ~ 1/M_ii scales exactly. If the floating-point Cholesky of
    S - cI (S = D M D) succeeds, then S - cI + E = R^T R with ||E||_2 <= g/(1-g) tr(S - cI),
    g = gamma_{n+1} (Demmel; Higham 2002, Thm 10.5), so S >= (c - ||E|| - u max S_ii) I. c
    covers that, times 4 for blocked LAPACK variants, plus the rounding made when forming M:
    |M_computed - M| <= gamma_terms |M|_abs elementwise.
    """
    d = torch.diagonal(M)
    if not bool(torch.isfinite(M).all()) or not bool((d > 0).all()):
        return False
    e = torch.round(torch.log2(d) / 2)
    D = torch.pow(2.0, -e).to(torch.float64)
    S = D[:, None] * M * D[None, :]
    Sabs = D[:, None] * Mabs * D[None, :]
    n = S.shape[0]
    g = (n + 1) * U / (1 - (n + 1) * U)
    gt = terms * U / (1 - terms * U)
    c = 4 * g / (1 - g) * float(torch.diagonal(S).sum()) + U * float(torch.diagonal(S).max())
    c += gt * float(torch.linalg.matrix_norm(Sabs))  # Frobenius >= spectral
    c *= 1.01
    _, info = torch.linalg.cholesky_ex(S - c * torch.eye(n, dtype=torch.float64))
    return int(info) == 0


def verify(prob_full: LMIProblem, lams: list[Tensor], fallback: list[Tensor],
            prob_red: LMIProblem) -> Certificate:
    """A certificate from multipliers ``lams``, proved on the full (unreduced) problem.

    ``fallback``: strictly feasible multipliers (doubled closed-form ones) mixed in, with
    weight theta, when ``lams`` alone do not verify. ``prob_red``: the reduced problem, where
    the candidate rho (the smallest for these multipliers) is computed; the proof is on the
    full matrix. Raises CertificateError.
    """
    terms = max(*prob_full.sizes[1:], prob_full.out.shape[0]) + 4
    for theta in (0.0, 1e-6, 1e-4, 1e-2, 1.0):
        lam = [(1 - theta) * a.clamp_min(0) + theta * b
               for a, b in zip(lams, fallback, strict=True)]
        with torch.no_grad():
            ev = schur_eigs(prob_red, lam)
        if ev is None:
            continue
        rs = max(float(ev[-1]), 0.0)
        for infl in (1e-9, 1e-7, 1e-5):
            rho = rs * (1 + infl) + 1e-300
            M = prob_full.matrix(rho, lam)
            if is_psd(M, prob_full.matrix(rho, lam, absolute=True), terms):
                value = math.sqrt(rho) * (1 + ROUNDING_SLACK)
                return Certificate(value, rho, tuple(lam), theta)
    raise CertificateError("the multipliers could not be verified (the LMI matrix is not "
                           "provably positive semidefinite)", "verification failed")


def reduced(full: LMIProblem) -> LMIProblem:
    """An exactly equivalent smaller problem when n_0 > n_1, for the solver.

    The constraints see dx only through A_0 dx, so the input block can be replaced by R y
    with R R^T = A_0 A_0^T (dimension n_1). ``verify`` does not rely on it: its proof is on
    the full matrix.
    """
    A0 = full.maps[0]
    if A0.shape[1] <= A0.shape[0]:
        return full
    G = A0 @ A0.T
    ev, V = torch.linalg.eigh((G + G.T) / 2)
    return replace(full, maps=[V * ev.clamp_min(0).sqrt(), *full.maps[1:]])

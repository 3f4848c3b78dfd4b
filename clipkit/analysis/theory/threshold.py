"""L*, the least Lipschitz constant of an interpolant, and the threshold λ* of the constant."""

from __future__ import annotations

import math

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.spatial.distance
import scipy.special

from clipkit.analysis.theory.inputs import (
    as_xy,
    difference_matrix,
    index_pairs,
    merge_equal_inputs,
)


def min_interpolation_constant(x, y) -> float:
    """L* = max_{i≠j} ‖y_i − y_j‖ / ‖x_i − x_j‖, the least Lipschitz constant of an interpolant.

    In 1-D only consecutive sorted points are needed. Equal inputs with different labels
    give ``inf``; with equal labels they are skipped. Also the Lipschitz constant Lip(z)
    of values z at the points x.
    """
    x, y, _ = as_xy(x, y)
    xu, _, _, inverse = merge_equal_inputs(x, y)
    first = np.full(len(xu), -1)
    first[inverse[::-1]] = np.arange(len(x))[::-1]  # one representative per unique input
    if np.any(y != y[first][inverse]):  # equal inputs with different labels: no interpolant
        return math.inf
    y = y[first]
    if len(xu) < 2:
        return 0.0
    if xu.shape[1] == 1:
        num = np.sqrt(np.sum(np.diff(y, axis=0) ** 2, axis=1))
        return float(np.max(num / np.diff(xu[:, 0])))
    num = scipy.spatial.distance.pdist(y)
    den = scipy.spatial.distance.pdist(xu)
    return float(np.max(num / den))


def clarabel_tolerances(second_order: bool) -> dict[str, float]:
    """Clarabel's tolerances: 1e-10 for scalar labels (linear/quadratic cones); 1e-9 with
    second-order cones (vector labels), where 1e-10 often ends "almost solved" with the
    same objective as 1e-9 (measured, N = 200, d = 2 and 5)."""
    tol = 1e-9 if second_order else 1e-10
    return {"tol_gap_abs": tol, "tol_gap_rel": tol, "tol_feas": tol}


def _kr_closed_form(x1: np.ndarray, r: np.ndarray) -> float:
    """sup_{Lip(g)≤1} Σ ⟨r_i, g(x_i)⟩ in 1-D, for Σ r_i = 0: Σ_k ‖R_k‖ (x_{k+1} − x_k).

    Summation by parts with x sorted and R_k = Σ_{i≤k} r_i (R_N = 0):
    Σ ⟨r_i, g_i⟩ = Σ_{k<N} ⟨R_k, g_k − g_{k+1}⟩, and each ‖g_k − g_{k+1}‖ ≤ x_{k+1} − x_k
    (which is all a 1-Lipschitz g on a line needs), so the sup takes
    g_k − g_{k+1} = (x_{k+1} − x_k) R_k/‖R_k‖.
    """
    order = np.argsort(x1, kind="stable")
    cum = np.cumsum(r[order], axis=0)[:-1]
    return float(np.sum(np.sqrt(np.sum(cum**2, axis=1)) * np.diff(x1[order])))


def _kr_lp(x: np.ndarray, r: np.ndarray) -> float:
    """max Σ r_i g_i s.t. g_j − g_i ≤ ‖x_i − x_j‖ for all i ≠ j (scalar r); HiGHS LP.

    g_0 = 0 fixes the free additive constant (Σ r_i = 0 makes the objective blind to it).
    """
    k = len(x)
    i, j = index_pairs(k, one_d=False)
    dist = scipy.spatial.distance.pdist(x)
    d = difference_matrix(i, j, k)
    a_ub = scipy.sparse.vstack([d, -d]).tocsr()
    b_ub = np.concatenate([dist, dist])
    bounds = [(0.0, 0.0)] + [(None, None)] * (k - 1)
    res = scipy.optimize.linprog(-r[:, 0], A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"threshold: the linear program failed: {res.message}")
    return float(-res.fun)


def _kr_socp(x: np.ndarray, r: np.ndarray) -> float:
    """max Σ ⟨r_i, g_i⟩ s.t. ‖g_i − g_j‖ ≤ ‖x_i − x_j‖ (vector r); cvxpy + Clarabel."""
    import cvxpy as cp

    k, m = r.shape
    i, j = index_pairs(k, one_d=False)
    dist = scipy.spatial.distance.pdist(x)
    d = difference_matrix(i, j, k)
    g = cp.Variable((k, m))
    cons = [cp.norm(d @ g, 2, axis=1) <= dist, g[0] == 0]
    prob = cp.Problem(cp.Maximize(cp.sum(cp.multiply(r, g))), cons)
    prob.solve(solver=cp.CLARABEL, **clarabel_tolerances(second_order=True))
    if prob.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"threshold: the cone program ended with status {prob.status}")
    return float(prob.value)


def threshold(x, y, method: str = "auto") -> float:
    """λ* = (2/N) · sup_{Lip(g)≤1} Σ_i ⟨y_i − ȳ, g(x_i)⟩ (squared loss, penalty λ·Lip).

    ȳ minimises (1/N) Σ ‖z_i − y_i‖² + λ·Lip(z) iff λ ≥ λ*: at z = ȳ the fit term has
    gradient −(2/N)(y_i − ȳ), and the subdifferential of the seminorm Lip at a constant is
    the unit ball of its dual norm {s : Σ⟨s_i, w_i⟩ ≤ Lip(w) ∀w}; so 0 ∈ ∂ iff
    (2/N) sup_{Lip(w)≤1} Σ⟨y_i − ȳ, w_i⟩ ≤ λ.

    ``method``: ``"closed_form"`` (1-D inputs only; cumulative sums, see
    :func:`_kr_closed_form`), ``"lp"`` (any d, scalar y: HiGHS linear program over all
    pairs; a cone program via Clarabel for vector y), or ``"auto"`` (closed form in 1-D).
    Equal inputs are merged first (their residuals add up).
    """
    x, y, _ = as_xy(x, y)
    if method not in ("auto", "closed_form", "lp"):
        raise ValueError(f"method must be 'auto', 'closed_form' or 'lp', got {method!r}")
    n = len(x)
    xu, ymean, counts, _ = merge_equal_inputs(x, y)
    r = counts[:, None] * (ymean - y.mean(axis=0))  # summed residuals per unique input
    if len(xu) < 2:
        return 0.0
    if method == "closed_form" or (method == "auto" and xu.shape[1] == 1):
        if xu.shape[1] != 1:
            raise ValueError(f"the closed form needs 1-D inputs, x has d = {xu.shape[1]}")
        sup = _kr_closed_form(xu[:, 0], r)
    elif r.shape[1] == 1:
        sup = _kr_lp(xu, r)
    else:
        sup = _kr_socp(xu, r)
    return 2.0 * sup / n

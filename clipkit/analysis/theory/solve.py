"""The exact function-space minimiser of E(z) + λ·Lip(z)^p, and its extension."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.spatial.distance
import scipy.special

from clipkit.analysis.theory.inputs import (
    as_x,
    as_xy,
    check_lam,
    check_power,
    difference_matrix,
    index_pairs,
    merge_equal_inputs,
)
from clipkit.analysis.theory.threshold import clarabel_tolerances, min_interpolation_constant


@dataclass(frozen=True)
class Solution:
    """The exact minimiser over all Lipschitz functions of (1/N) Σ ‖z_i − y_i‖² + λ·Lip(z)^p.

    Attributes:
        z: values at the data points, the shape of y ((N,) or (N, m)).
        lip: Lip(z) = max_{i≠j} ‖z_i − z_j‖/‖x_i − x_j‖ (recomputed from z).
        fit: E(z) = (1/N) Σ ‖z_i − y_i‖².
        objective: fit + λ·lip^p.
        lam, power: the problem's λ and p.
        x: the data inputs (N, d), for :func:`extend`.
        status: the solver's status; seconds: wall time of the solve.
    """

    z: np.ndarray
    lip: float
    fit: float
    objective: float
    lam: float
    power: int
    x: np.ndarray
    status: str
    seconds: float


def solve(x, y, lam: float, power: int = 1) -> Solution:
    """Exact min over Lipschitz f of (1/N) Σ ‖f(x_i) − y_i‖² + λ·Lip(f)^p, via cvxpy + Clarabel.

    Epigraph form: min (1/N) Σ ‖z_i − y_i‖² + λ L^p s.t. ‖z_i − z_j‖ ≤ L ‖x_i − x_j‖ for
    consecutive sorted points (1-D) or all pairs (d-D). Equal inputs are merged (one value
    each, weighted by their count). Internally y is centred and scaled to unit RMS for the
    solver's sake; the returned numbers are in the original units.
    """
    x, y, vector = as_xy(x, y)
    lam = check_lam(lam)
    power = check_power(power)
    import cvxpy as cp

    start = time.perf_counter()
    n = len(x)
    xu, ymean, counts, inverse = merge_equal_inputs(x, y)
    shift = y.mean(axis=0)
    scale = float(np.sqrt(np.mean(np.sum((y - shift) ** 2, axis=1)))) or 1.0
    yt = (ymean - shift) / scale
    # in the scaled variables z = shift + scale·t, L = scale·Lt; divide the objective by scale²
    lam_t = lam * scale ** (power - 2)
    k, m = yt.shape
    status = "optimal"
    if k == 1:  # all inputs equal: the best value is the mean, Lip = 0
        t = yt.copy()
    else:
        i, j = index_pairs(k, one_d=xu.shape[1] == 1)
        dist = np.linalg.norm(xu[j] - xu[i], axis=1)
        d = difference_matrix(i, j, k)
        tv = cp.Variable((k, m))
        lv = cp.Variable(nonneg=True)
        diff = d @ tv
        norms = cp.abs(diff[:, 0]) if m == 1 else cp.norm(diff, 2, axis=1)
        fit = cp.sum(cp.multiply(counts[:, None] / n, cp.square(tv - yt)))
        penalty = lam_t * (lv if power == 1 else cp.square(lv))
        prob = cp.Problem(cp.Minimize(fit + penalty), [norms <= lv * dist])
        prob.solve(solver=cp.CLARABEL, **clarabel_tolerances(second_order=m > 1))
        status = prob.status
        if status not in ("optimal", "optimal_inaccurate") or tv.value is None:
            raise RuntimeError(f"solve: the solver ended with status {status!r}")
        t = tv.value
    z = shift + scale * t[inverse]
    lip = min_interpolation_constant(x, z)
    fit_value = float(np.mean(np.sum((z - y) ** 2, axis=1)))
    return Solution(
        z=z[:, 0] if vector else z,
        lip=lip,
        fit=fit_value,
        objective=fit_value + lam * lip**power,
        lam=lam,
        power=power,
        x=x,
        status=status,
        seconds=time.perf_counter() - start,
    )


def extend(x, z, x_new, lip: float | None = None) -> np.ndarray:
    """Values at ``x_new`` of a minimal-Lipschitz extension of the values z at x.

    1-D inputs: the piecewise-linear interpolant (constant beyond the data), which keeps
    Lip(z) and, for vector z, is exact. d-D inputs: the mean of McShane's extensions
    max_i (z_i − L‖x − x_i‖) and min_i (z_i + L‖x − x_i‖), each output dimension
    separately (L = ``lip`` or Lip of that dimension of z); for scalar z its Lipschitz
    constant is Lip(z), for vector z it can be up to √m·Lip(z) (Kirszbraun's extension,
    which keeps Lip(z), has no simple formula). Shapes: x (N,) or (N, d), x_new (M,) or
    (M, d); returns (M,) or (M, m) like z.

    ``x`` may be a :class:`Solution`; then its inputs and values are used and ``z`` is ignored.
    """
    if isinstance(x, Solution):
        x, z = x.x, x.z
    x, zz, vector = as_xy(x, z)
    xn = as_x(x_new, "x_new")
    if xn.shape[1] != x.shape[1]:
        raise ValueError(f"x_new has d = {xn.shape[1]}, x has d = {x.shape[1]}")
    xu, zu, _, _ = merge_equal_inputs(x, zz)
    if xu.shape[1] == 1:
        out = np.stack([np.interp(xn[:, 0], xu[:, 0], zu[:, c]) for c in range(zu.shape[1])], 1)
    else:
        dist = scipy.spatial.distance.cdist(xn, xu)
        cols = []
        for c in range(zu.shape[1]):
            lc = min_interpolation_constant(xu, zu[:, c]) if lip is None else float(lip)
            lower = np.max(zu[:, c] - lc * dist, axis=1)
            upper = np.min(zu[:, c] + lc * dist, axis=1)
            cols.append(0.5 * (lower + upper))
        out = np.stack(cols, 1)
    return out[:, 0] if vector else out

"""The λ → constant analysis of DESIGN §3, computed exactly.

Notation. Data x_i ∈ R^d (shape (N,) or (N, d)), labels y_i ∈ R^m (shape (N,) or (N, m)),
E(f) = (1/N) Σ ℓ(f(x_i), y_i), and f_λ minimises E(f) + λ·Lip(f)^p over *all* Lipschitz
functions, Lip(f) = sup ‖f(x) − f(x')‖₂ / ‖x − x'‖₂. By the McShane/Kirszbraun extension
only the values z_i = f(x_i) matter, so for the squared loss ℓ(z, y) = ‖z − y‖² the
problem is the finite convex program

    min_z (1/N) Σ ‖z_i − y_i‖² + λ · Lip(z)^p,   Lip(z) = max_{i≠j} ‖z_i − z_j‖ / ‖x_i − x_j‖

(in 1-D only consecutive sorted points matter). Results of this module:

* :func:`optimal_constant` c* = argmin_c E(c) and E(c*);
* :func:`const_gap` how far a model's outputs are from a constant;
* :func:`threshold` λ*, above which ȳ is the exact minimiser (squared loss, p = 1);
* :func:`solve` the exact minimiser z, and :func:`extend` its minimal-Lipschitz extension;
* :func:`min_interpolation_constant` L*, the limit of Lip(f_λ) as λ → 0;
* :func:`rate_bound` / :func:`check_rate` Lip(f_λ) ≤ (E(c*) − E(f_λ))/λ (p = 1),
  Lip(f_λ)² ≤ (E(c*) − E(f_λ))/λ (p = 2).

Everything accepts numpy arrays or torch tensors and computes in float64.

**Equal inputs** (x_i = x_j, i ≠ j): a Lipschitz function takes one value there, so
:func:`solve` and :func:`threshold` merge such points into one (its labels' mean, with
their count as weight; the within-group spread of the labels stays in the fit term), and
:func:`min_interpolation_constant` is ``inf`` when their labels differ (and ignores the
pair when the labels are equal).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.spatial.distance
import scipy.special
import torch

__all__ = [
    "ConstGap",
    "OptimalConstant",
    "RateCheck",
    "Solution",
    "check_rate",
    "const_gap",
    "extend",
    "min_interpolation_constant",
    "optimal_constant",
    "rate_bound",
    "solve",
    "threshold",
]

LOSSES = ("squared", "cross_entropy")
POWERS = (1, 2)


# ---------------------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------------------


def _to_numpy(a, name: str) -> np.ndarray:
    """``a`` (torch tensor, numpy array or nested sequence) as a float64 numpy array."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().to(torch.float64).numpy()
    try:
        out = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(a)!r}") from err
    return out


def _as_x(x, name: str = "x") -> np.ndarray:
    """Inputs as an (N, d) float64 array; accepts (N,), (N, d), or (N, *shape) flattened
    (distances are ℓ2 on flattened tensors, as in DESIGN §2)."""
    x = _to_numpy(x, name)
    if x.ndim == 0:
        raise ValueError(f"{name} must have shape (N,) or (N, d), got a scalar")
    x = x.reshape(len(x), -1)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite; it has NaN or inf entries")
    return x


def _as_y(y, name: str = "y") -> tuple[np.ndarray, bool]:
    """Labels as an (N, m) float64 array, and whether they came as a vector (N,)."""
    y = _to_numpy(y, name)
    vector = y.ndim == 1
    if vector:
        y = y[:, None]
    elif y.ndim != 2:
        raise ValueError(f"{name} must have shape (N,) or (N, m), got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} must be finite; it has NaN or inf entries")
    return y, vector


def _as_xy(x, y) -> tuple[np.ndarray, np.ndarray, bool]:
    """Checked (x (N, d), y (N, m), y_was_vector); N ≥ 2 and equal lengths."""
    x = _as_x(x)
    y, vector = _as_y(y)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length N, got {len(x)} and {len(y)}")
    if len(x) < 2:
        raise ValueError(f"need at least N = 2 data points, got N = {len(x)}")
    return x, y, vector


def _check_lam(lam, allow_zero: bool = True) -> float:
    """λ as a float; finite and ≥ 0 (> 0 when ``allow_zero`` is False)."""
    if isinstance(lam, torch.Tensor) and lam.numel() == 1:
        lam = lam.item()
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise TypeError(f"lam must be a real number, got {lam!r}")
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0 or (lam == 0 and not allow_zero):
        accepted = "finite and >= 0" if allow_zero else "finite and > 0"
        raise ValueError(f"lam must be {accepted}, got {lam!r}")
    return lam


def _check_power(power) -> int:
    if isinstance(power, bool) or power not in POWERS:
        raise ValueError(f"power must be 1 or 2 (penalty λ·Lip or λ·Lip²), got {power!r}")
    return int(power)


def _check_loss(loss) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return loss


def _merge_equal_inputs(x: np.ndarray, y: np.ndarray):
    """Merge equal rows of x: (unique x (K, d), label means (K, m), counts (K,), inverse (N,)).

    Rows come back in lexicographic order, so in 1-D they are sorted.
    """
    xu, inverse, counts = np.unique(x, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(xu), y.shape[1]))
    np.add.at(sums, inverse, y)
    return xu, sums / counts[:, None], counts, inverse


def _pairs(k: int, one_d: bool) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) that carry the Lipschitz constraint: consecutive in 1-D, all in d-D."""
    if one_d:
        i = np.arange(k - 1)
        return i, i + 1
    i, j = np.triu_indices(k, 1)
    return i, j


def _difference_matrix(i: np.ndarray, j: np.ndarray, k: int) -> scipy.sparse.csr_matrix:
    """Sparse D with (D z)_p = z_{j_p} − z_{i_p}."""
    rows = np.arange(len(i))
    data = np.concatenate([-np.ones(len(i)), np.ones(len(i))])
    return scipy.sparse.csr_matrix(
        (data, (np.concatenate([rows, rows]), np.concatenate([i, j]))), shape=(len(i), k)
    )


# ---------------------------------------------------------------------------------------
# optimal constant and distance to it
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimalConstant:
    """c* = argmin_c E(c) and E(c*).

    Attributes:
        c: the constant; shape (m,) for the squared loss, (num_classes,) logits for
            cross-entropy (log class frequencies: logsumexp(c) = 0; ``-inf`` for a
            class absent from y).
        value: E(c*) — mean ‖y − ȳ‖² (squared), the entropy −Σ p_k log p_k (cross-entropy).
        loss: ``"squared"`` or ``"cross_entropy"``.
    """

    c: np.ndarray
    value: float
    loss: str


def optimal_constant(y, loss: str = "squared", num_classes: int | None = None) -> OptimalConstant:
    """The best constant prediction c* = argmin_c (1/N) Σ ℓ(c, y_i), and E(c*).

    * squared loss ℓ(c, y) = ‖c − y‖²: c* = ȳ, E(c*) = (1/N) Σ ‖y_i − ȳ‖² (Var(y) for m = 1).
    * cross-entropy ℓ(c, y) = −log softmax(c)_y with integer labels y ∈ {0, …, K−1}:
      softmax(c*) = class frequencies p, so c* = log p (defined up to an additive
      constant; this choice has logsumexp(c*) = 0) and E(c*) = −Σ p_k log p_k.
      A class absent from y has p_k = 0: the infimum is approached as its logit → −∞
      and not attained by finite logits, so c*_k = −inf (softmax gives it 0; the loss
      stays finite because no label asks for it). K is ``num_classes`` or max(y) + 1.
    """
    loss = _check_loss(loss)
    if loss == "squared":
        y2, _ = _as_y(y)
        if len(y2) < 1:
            raise ValueError("y is empty")
        c = y2.mean(axis=0)
        return OptimalConstant(c=c, value=float(np.mean(np.sum((y2 - c) ** 2, axis=1))), loss=loss)
    labels = _to_numpy(y, "y").reshape(-1)
    if len(labels) < 1:
        raise ValueError("y is empty")
    if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)) or labels.min() < 0:
        raise ValueError("cross_entropy needs integer class labels y >= 0")
    labels = labels.astype(np.int64)
    k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if k <= labels.max():
        raise ValueError(f"num_classes = {num_classes} but y has label {int(labels.max())}")
    p = np.bincount(labels, minlength=k) / len(labels)
    with np.errstate(divide="ignore"):
        c = np.log(p)
    value = float(-np.sum(p[p > 0] * np.log(p[p > 0])))
    return OptimalConstant(c=c, value=value, loss=loss)


@dataclass(frozen=True)
class ConstGap:
    """Distance of outputs f(x_i) to a constant c.

    Attributes:
        rms: sqrt((1/N) Σ ‖f(x_i) − c‖²).
        max: max_i ‖f(x_i) − c‖.
        spread: per output dimension, max_i f(x_i) − min_i f(x_i) (shape (m,)); 0 for a
            constant function whatever c is.
    """

    rms: float
    max: float
    spread: np.ndarray


def _outputs(model_or_outputs, x=None) -> np.ndarray:
    """Outputs as (N, m) float64: ``model(x)`` (no grad, eval mode, restored) or the array."""
    if callable(model_or_outputs):
        if x is None:
            raise ValueError("x is needed when a model is given")
        model = model_or_outputs
        xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        if xt.dim() == 1:  # x given as (N,): a model on 1-D inputs expects (N, 1)
            xt = xt[:, None]
        was_training = getattr(model, "training", None)
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        if params:
            xt = xt.to(device=params[0].device, dtype=params[0].dtype)
        if isinstance(model, torch.nn.Module):
            model.eval()
        try:
            with torch.no_grad():
                out = model(xt)
        finally:
            if isinstance(model, torch.nn.Module) and was_training:
                model.train()
        out = _to_numpy(out, "model output")
    else:
        out = _to_numpy(model_or_outputs, "outputs")
    return out.reshape(len(out), -1)


def const_gap(model_or_outputs, x=None, c=None) -> ConstGap:
    """How far f(x_i) is from the constant c: RMS and max distance, and the output spread.

    ``model_or_outputs`` is a model (called on ``x``, in eval mode without gradients) or
    its outputs, shape (N,) or (N, m). ``c`` defaults to the outputs' mean.
    """
    out = _outputs(model_or_outputs, x)
    c = out.mean(axis=0) if c is None else _to_numpy(c, "c").reshape(-1)
    if c.shape[0] not in (1, out.shape[1]):
        raise ValueError(f"c has {c.shape[0]} entries, the outputs have {out.shape[1]}")
    dist = np.sqrt(np.sum((out - c) ** 2, axis=1))
    return ConstGap(
        rms=float(np.sqrt(np.mean(dist**2))),
        max=float(dist.max()),
        spread=out.max(axis=0) - out.min(axis=0),
    )


# ---------------------------------------------------------------------------------------
# L* and Lipschitz constants of values
# ---------------------------------------------------------------------------------------


def min_interpolation_constant(x, y) -> float:
    """L* = max_{i≠j} ‖y_i − y_j‖ / ‖x_i − x_j‖, the least Lipschitz constant of an interpolant.

    In 1-D only consecutive sorted points are needed. Equal inputs with different labels
    give ``inf``; with equal labels they are skipped. Also the Lipschitz constant Lip(z)
    of values z at the points x.
    """
    x, y, _ = _as_xy(x, y)
    xu, _, _, inverse = _merge_equal_inputs(x, y)
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


# ---------------------------------------------------------------------------------------
# the threshold λ*
# ---------------------------------------------------------------------------------------


def _clarabel_tol(second_order: bool) -> dict[str, float]:
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
    i, j = _pairs(k, one_d=False)
    dist = scipy.spatial.distance.pdist(x)
    d = _difference_matrix(i, j, k)
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
    i, j = _pairs(k, one_d=False)
    dist = scipy.spatial.distance.pdist(x)
    d = _difference_matrix(i, j, k)
    g = cp.Variable((k, m))
    cons = [cp.norm(d @ g, 2, axis=1) <= dist, g[0] == 0]
    prob = cp.Problem(cp.Maximize(cp.sum(cp.multiply(r, g))), cons)
    prob.solve(solver=cp.CLARABEL, **_clarabel_tol(second_order=True))
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
    x, y, _ = _as_xy(x, y)
    if method not in ("auto", "closed_form", "lp"):
        raise ValueError(f"method must be 'auto', 'closed_form' or 'lp', got {method!r}")
    n = len(x)
    xu, ymean, counts, _ = _merge_equal_inputs(x, y)
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


# ---------------------------------------------------------------------------------------
# the exact function-space solution
# ---------------------------------------------------------------------------------------


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
    x, y, vector = _as_xy(x, y)
    lam = _check_lam(lam)
    power = _check_power(power)
    import cvxpy as cp

    start = time.perf_counter()
    n = len(x)
    xu, ymean, counts, inverse = _merge_equal_inputs(x, y)
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
        i, j = _pairs(k, one_d=xu.shape[1] == 1)
        dist = np.linalg.norm(xu[j] - xu[i], axis=1)
        d = _difference_matrix(i, j, k)
        tv = cp.Variable((k, m))
        lv = cp.Variable(nonneg=True)
        diff = d @ tv
        norms = cp.abs(diff[:, 0]) if m == 1 else cp.norm(diff, 2, axis=1)
        fit = cp.sum(cp.multiply(counts[:, None] / n, cp.square(tv - yt)))
        penalty = lam_t * (lv if power == 1 else cp.square(lv))
        prob = cp.Problem(cp.Minimize(fit + penalty), [norms <= lv * dist])
        prob.solve(solver=cp.CLARABEL, **_clarabel_tol(second_order=m > 1))
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
    x, zz, vector = _as_xy(x, z)
    xn = _as_x(x_new, "x_new")
    if xn.shape[1] != x.shape[1]:
        raise ValueError(f"x_new has d = {xn.shape[1]}, x has d = {x.shape[1]}")
    xu, zu, _, _ = _merge_equal_inputs(x, zz)
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


# ---------------------------------------------------------------------------------------
# the rate bound
# ---------------------------------------------------------------------------------------


def rate_bound(E_const: float, E_f: float, lam: float, power: int = 1) -> float:  # noqa: N803
    """The bound on Lip(f_λ) of DESIGN §3, from E(f_λ) + λ·Lip(f_λ)^p ≤ E(c*):

    p = 1: Lip(f_λ) ≤ (E(c*) − E(f_λ))/λ;   p = 2: Lip(f_λ) ≤ sqrt((E(c*) − E(f_λ))/λ).

    Negative when E_f > E_const, which no minimiser can have (for p = 2 the value is
    −sqrt(|…|), keeping the sign). ``inf`` at λ = 0.
    """
    lam = _check_lam(lam)
    power = _check_power(power)
    gain = float(E_const) - float(E_f)
    if lam == 0:
        return math.inf if gain >= 0 else -math.inf
    b = gain / lam
    return b if power == 1 else math.copysign(math.sqrt(abs(b)), b)


@dataclass(frozen=True)
class RateCheck:
    """A model (or values) held against the rate bound.

    Attributes:
        E_const: E(c*) of the best constant; E_f: E(f) of the model on the data.
        lam, power: the penalty; bound: :func:`rate_bound`.
        lip: the Lipschitz constant compared; lip_source: where it came from
            (``"given"`` or ``"data pairs"``, the latter a lower bound of Lip(f)).
        holds: lip ≤ bound·(1 + rtol) + atol, i.e. E(f) + λ·lip^p ≤ E(c*) (up to tol): the
            model beats the best constant on the regularized objective. The bound is a
            theorem for the exact minimiser; a trained network is only approximately
            optimal, so ``holds = False`` is a finding about the training, not an error.
        margin: bound − lip.
    """

    E_const: float  # noqa: N815
    E_f: float  # noqa: N815
    lam: float
    power: int
    bound: float
    lip: float
    lip_source: str
    holds: bool
    margin: float


def check_rate(
    model_or_outputs,
    x,
    y,
    lam: float,
    power: int = 1,
    lip: float | None = None,
    loss: str = "squared",
    rtol: float = 1e-6,
    atol: float = 1e-9,
) -> RateCheck:
    """Put a model (or its outputs at x) against :func:`rate_bound`; report, do not assert.

    E(f) is the mean loss on (x, y) (squared: (1/N)Σ‖f(x_i) − y_i‖²; cross_entropy: mean
    −log softmax(f(x_i))_{y_i}). ``lip`` is the model's Lipschitz constant if known (e.g.
    from an estimator); otherwise the largest quotient over the data pairs, a *lower* bound
    of Lip(f), so ``holds`` is then only a necessary condition.
    """
    loss = _check_loss(loss)
    lam = _check_lam(lam)
    power = _check_power(power)
    x2 = _as_x(x)
    out = _outputs(model_or_outputs, x)
    if len(out) != len(x2):
        raise ValueError(f"outputs have length {len(out)}, x has {len(x2)}")
    copt = optimal_constant(y, loss)
    if loss == "squared":
        y2, _ = _as_y(y)
        if len(y2) != len(out):
            raise ValueError(f"x and y must have the same length N, got {len(out)} and {len(y2)}")
        e_f = float(np.mean(np.sum((out - y2) ** 2, axis=1)))
    else:
        labels = _to_numpy(y, "y").reshape(-1).astype(np.int64)
        logp = out - scipy.special.logsumexp(out, axis=1, keepdims=True)
        e_f = float(-np.mean(logp[np.arange(len(labels)), labels]))
    if lip is None:
        lip_value, source = min_interpolation_constant(x2, out), "data pairs"
    else:
        lip_value, source = float(lip), "given"
    bound = rate_bound(copt.value, e_f, lam, power)
    return RateCheck(
        E_const=copt.value,
        E_f=e_f,
        lam=lam,
        power=power,
        bound=bound,
        lip=lip_value,
        lip_source=source,
        holds=bool(lip_value <= bound * (1 + rtol) + atol),
        margin=bound - lip_value,
    )

"""How λ drives the minimiser of E(f) + λ·Lip(f)^p to a constant, computed exactly.

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

The statements and their proofs: ``docs/mathematics.md``. Modules: ``inputs`` (array
handling), ``constants``, ``threshold`` (λ*, L*), ``solve`` (the exact minimiser), ``rate``.
"""


from clipkit.analysis.theory.constants import (
    ConstGap,
    OptimalConstant,
    const_gap,
    optimal_constant,
)
from clipkit.analysis.theory.rate import RateCheck, check_rate, rate_bound
from clipkit.analysis.theory.solve import Solution, extend, solve
from clipkit.analysis.theory.threshold import min_interpolation_constant, threshold

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

"""The rate bound Lip(f_λ)^p ≤ (E(c*) − E(f_λ))/λ, and a model held against it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.spatial.distance
import scipy.special

from clipkit.analysis.theory.constants import class_labels, model_outputs, optimal_constant
from clipkit.analysis.theory.inputs import (
    as_x,
    as_y,
    check_lam,
    check_loss,
    check_power,
)
from clipkit.analysis.theory.threshold import min_interpolation_constant


def rate_bound(E_const: float, E_f: float, lam: float, power: int = 1) -> float:  # noqa: N803
    """The rate bound on Lip(f_λ) (docs/mathematics.md §3), from E(f_λ) + λ·Lip(f_λ)^p ≤ E(c*):

    p = 1: Lip(f_λ) ≤ (E(c*) − E(f_λ))/λ;   p = 2: Lip(f_λ) ≤ sqrt((E(c*) − E(f_λ))/λ).

    Negative when E_f > E_const, which no minimiser can have (for p = 2 the value is
    −sqrt(|…|), keeping the sign). ``inf`` at λ = 0.
    """
    lam = check_lam(lam)
    power = check_power(power)
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
    loss = check_loss(loss)
    lam = check_lam(lam)
    power = check_power(power)
    x2 = as_x(x)
    out = model_outputs(model_or_outputs, x)
    if len(out) != len(x2):
        raise ValueError(f"outputs have length {len(out)}, x has {len(x2)}")
    copt = optimal_constant(y, loss)
    if loss == "squared":
        y2, _ = as_y(y)
        if len(y2) != len(out):
            raise ValueError(f"x and y must have the same length N, got {len(out)} and {len(y2)}")
        e_f = float(np.mean(np.sum((out - y2) ** 2, axis=1)))
    else:
        labels = class_labels(y)
        if len(labels) != len(out):
            raise ValueError(f"x and y must have the same length N, got {len(out)} and "
                             f"{len(labels)}")
        if labels.max() >= out.shape[1]:
            raise ValueError(f"label {int(labels.max())} needs at least {int(labels.max()) + 1} "
                             f"outputs (logits), the model has {out.shape[1]}")
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

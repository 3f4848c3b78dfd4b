"""Certified l2 upper bounds of MLPs by the LipSDP-neuron certificate.

The model must be an MLP (``chain.mlp_chain``): Linear, BatchNorm1d (eval), Flatten /
Dropout / Identity and elementwise activations with a slope interval [a, b]
(``structure.activation_slopes``: ReLU, sigmoid, tanh, LeakyReLU, ...). Convolutional
networks are not handled: they keep the product bound of ``upper``.

How a number is obtained, and why each one is a certificate (the LMI: ``lmi``):

* multipliers come from a solver. ``solver="lbfgs"`` (default, ``lbfgs``): L-BFGS on the
  Schur-complement eigenvalue, hand-written (the cvxpy solvers in the dependencies do not
  scale to the 784-200-80-10 MLP; see ``lbfgs``). ``"SCS"`` and ``"CLARABEL"`` (cvxpy)
  solve the same SDP for small networks as independent cross-checks; a cvxpy status other
  than "optimal" raises ``CertificateError``. ``method="eclipse-fast"`` takes the closed-form
  multipliers of ``eclipse`` (no solver at all, looser).
* whatever their source, the multipliers are then verified in float64 on the full matrix
  (``lmi.verify``: rho recomputed, M(rho, lam) proved positive semidefinite by a Cholesky
  factorisation with an a priori rounding margin after an exact power-of-two scaling; Demmel's
  bound, Higham 2002 Thm 10.5, as in Rump 2006). If that fails, they are mixed with a strictly
  feasible closed-form point and retried; if nothing verifies, ``CertificateError``. The
  value is sqrt(rho) (1 + 1e-9), the slack the other upper bounds use.

Limits: every certificate built from slope intervals (this one, ECLipsE, the merged and
product bounds) is at least max over slope patterns D of ||W_K D_K ... D_1 W_0||, the worst
case over activations chosen independently per neuron. On CLIP-trained networks that is far
above the function's constant; local bounds (``local_upper_bound``: slopes restricted to an
l2 ball) are what makes certified robust accuracy meaningful there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from clipkit.analysis.lipschitz import lbfgs
from clipkit.analysis.lipschitz.chain import MLPChain, mlp_chain, require_chain
from clipkit.analysis.lipschitz.eclipse import eclipse_multipliers
from clipkit.analysis.lipschitz.estimate import Estimate
from clipkit.analysis.lipschitz.lmi import (
    Certificate,
    CertificateError,
    LMIProblem,
    drop_dead,
    problem_of,
    reduced,
    verify,
    widen,
)
from clipkit.analysis.lipschitz.slopes import global_slopes, local_slopes
from clipkit.analysis.lipschitz.upper import ROUNDING_SLACK, matrix_norm
from clipkit.core.utils import check_number, one_thread

__all__ = [
    "METHOD",
    "cvxpy_multipliers",
    "lipsdp_upper_bound",
    "local_upper_bound",
    "sdp_estimate",
    "solve",
]

#: the bracket's name for this estimate
METHOD = "LipSDP-neuron certificate (MLP)"


def cvxpy_multipliers(prob: LMIProblem, solver: str) -> tuple[float, list[Tensor], str]:
    """The same SDP through cvxpy (SCS, CLARABEL); raises CertificateError unless optimal."""
    import cvxpy as cp

    sizes = prob.sizes
    m, p = prob.mp()
    rho = cp.Variable()
    lams = [cp.Variable(a.shape[0], nonneg=True) for a in prob.maps]
    nb = len(sizes)
    blocks: list[list] = [[np.zeros((sizes[i], sizes[j])) for j in range(nb)] for i in range(nb)]
    diag: list = [rho * np.eye(sizes[0])] + [blocks[i][i] for i in range(1, nb)]
    for k, A in enumerate(prob.maps):
        An = A.numpy()
        if bool((p[k] != 0).any()):
            diag[k] = diag[k] + An.T @ cp.diag(cp.multiply(lams[k], p[k].numpy())) @ An
        C = -cp.diag(cp.multiply(lams[k], m[k].numpy())) @ An
        blocks[k + 1][k] = C
        blocks[k][k + 1] = C.T
        diag[k + 1] = diag[k + 1] + cp.diag(lams[k])
    W = prob.out.numpy()
    diag[-1] = diag[-1] - W.T @ W
    for i in range(nb):
        blocks[i][i] = diag[i]
    M = cp.bmat(blocks)
    problem = cp.Problem(cp.Minimize(rho), [(M + M.T) / 2 >> 0])
    try:
        problem.solve(solver=solver)
    except cp.error.SolverError as exc:
        raise CertificateError(f"cvxpy/{solver} failed: {exc}", "solver error") from exc
    if problem.status != cp.OPTIMAL or rho.value is None:
        raise CertificateError(
            f"cvxpy/{solver} returned status {problem.status!r}; no bound reported",
            str(problem.status))
    return float(rho.value), [torch.tensor(np.maximum(v.value, 0.0)) for v in lams], str(
        problem.status)


def _per_neuron(chain: MLPChain, slopes: Sequence[tuple[Tensor, Tensor]]
                ) -> tuple[list[Tensor], list[Tensor]]:
    if len(slopes) != len(chain.acts):
        raise ValueError(f"slopes: expected {len(chain.acts)} (alpha, beta) pairs, got "
                         f"{len(slopes)}")
    alpha = [torch.as_tensor(a, dtype=torch.float64) for a, _ in slopes]
    beta = [torch.as_tensor(b, dtype=torch.float64) for _, b in slopes]
    return alpha, beta


def solve(chain: MLPChain, *, method: str = "lipsdp-neuron", solver: str = "lbfgs",
          output: Tensor | None = None, slopes: Sequence[tuple[Tensor, Tensor]] | None = None,
          iters: int = 300, sharpness: Sequence[float] = lbfgs.SHARPNESS, widen_by: float = 1e-3,
          start: Sequence[Tensor] | None = None) -> tuple[Certificate, str, int]:
    """A verified certificate for Lip(output @ f) on the chain; (certificate, status, evals).

    ``slopes``: per hidden layer, per-neuron slope intervals (alpha, beta), e.g. from
    ``slopes.local_slopes``; by default ``slopes.global_slopes`` (the activations' global
    intervals, tightened where bounded activations bound the next layer). ``start``:
    multipliers to start L-BFGS from (e.g. twice a certificate's for another output map
    whose W^T W dominates half of this one's), else the closed-form ones. ``widen_by``:
    point intervals [s, s] are widened to relative width ``widen_by`` (the optimal
    multiplier of an equality is infinite).
    Runs its linear algebra on one thread (``core.utils.one_thread``).
    Raises CertificateError on failure, ValueError on bad arguments.
    """
    if method not in ("lipsdp-neuron", "eclipse-fast"):
        raise ValueError(f"method must be 'lipsdp-neuron' or 'eclipse-fast', got {method!r}")
    if solver not in ("lbfgs", "SCS", "CLARABEL"):
        raise ValueError(f"solver must be 'lbfgs', 'SCS' or 'CLARABEL', got {solver!r}")
    with one_thread():
        return _solve(chain, method, solver, output, slopes, iters, sharpness, widen_by, start)


def _solve(chain: MLPChain, method: str, solver: str, output: Tensor | None,
           slopes: Sequence[tuple[Tensor, Tensor]] | None, iters: int,
           sharpness: Sequence[float], widen_by: float, start: Sequence[Tensor] | None,
           ) -> tuple[Certificate, str, int]:
    W = chain.weights[-1] if output is None else torch.as_tensor(
        output, dtype=torch.float64) @ chain.weights[-1]
    alpha, beta = _per_neuron(chain, global_slopes(chain) if slopes is None else slopes)
    if not chain.acts:  # a linear map: the constant is ||W||_2, computed exactly
        v = matrix_norm(W) * (1 + ROUNDING_SLACK)
        return Certificate(v, v * v, (), 0.0), "exact (linear map)", 0
    # slope ends below 1e-30 in size (saturated sigmoids) are widened outwards, to 0 or
    # ±1e-30 (a lower end only down, an upper end only up): sound (a wider interval), and it
    # keeps the products formed later far from the subnormal range
    tiny = 1e-30
    alpha = [torch.where(a.abs() < tiny, torch.where(a >= 0, 0.0, -tiny), a) for a in alpha]
    beta = [torch.where((b.abs() < tiny) & (b != 0), torch.where(b > 0, tiny, 0.0), b)
            for b in beta]
    full = drop_dead(problem_of(chain, alpha, beta, W))
    wide = [widen(a, b, widen_by) for a, b in zip(full.alpha, full.beta, strict=True)]
    full = replace(full, alpha=[a for a, _ in wide], beta=[b for _, b in wide])
    red = reduced(full)
    s_fast, lam_fast = eclipse_multipliers(full)
    s_g, lam_g = eclipse_multipliers(full, "gershgorin")  # per-neuron slopes: may be better
    if s_g < s_fast:
        s_fast, lam_fast = s_g, lam_g
    fallback = [2 * lam for lam in lam_fast]  # strictly feasible: a margin in every block
    if method == "eclipse-fast":
        return verify(full, lam_fast, fallback, red), "closed form", 0
    if solver == "lbfgs":
        if start is not None:
            start = [torch.as_tensor(v, dtype=torch.float64) for v in start]
            if [len(v) for v in start] != [len(v) for v in lam_fast]:
                raise ValueError("start: multipliers do not match the network's neurons")
        lams, steps, status = lbfgs.lbfgs_multipliers(
            red, list(start) if start is not None else fallback, iters, sharpness)
    else:
        _, lams, status = cvxpy_multipliers(red, solver)
        steps = 0
    return verify(full, lams, fallback, red), status, steps


def lipsdp_upper_bound(model: nn.Module, input_shape: Sequence[int], *,
                       method: str = "lipsdp-neuron", solver: str = "lbfgs",
                       output: Tensor | None = None, iters: int = 300,
                       sharpness: Sequence[float] = lbfgs.SHARPNESS) -> Estimate:
    """Certified upper bound of Lip(model) (l2, flattened) for MLPs, as an ``Estimate``.

    method: ``"lipsdp-neuron"`` (the SDP, by ``solver``: "lbfgs", or cvxpy's "SCS" /
    "CLARABEL") or ``"eclipse-fast"`` (closed form). ``output``: a matrix C to bound
    Lip(C f) instead (e.g. one row e_y - e_j for a logit margin). Every value is verified
    (module docstring); the note records the solver's status, evaluations and verification.

    Raises:
        ValueError: the model is not an MLP (convolutional: ``lipschitz_upper``).
        CertificateError: the solver failed or the certificate did not verify.
    """
    t0 = time.perf_counter()
    chain = require_chain(model, input_shape, "lipsdp_upper_bound")
    cert, status, steps = solve(chain, method=method, solver=solver, output=output,
                                iters=iters, sharpness=sharpness)
    name = "LipSDP-neuron" if method == "lipsdp-neuron" else "ECLipsE-Fast"
    how = f"solver {solver}" if method == "lipsdp-neuron" else "closed form"
    note = (f"{how}, status {status}" + (f", {steps} evaluations" if steps else "")
            + ", verified in float64 (Cholesky with rounding margin)"
            + (f", mixed {cert.mixed:g} of the closed-form point" if cert.mixed else ""))
    return Estimate(cert.value, "upper", f"{name} certificate (MLP)", steps, None,
                    time.perf_counter() - t0, note)


def local_upper_bound(model: nn.Module, x: Tensor, eps: float, *,
                      output: Tensor | None = None, **kwargs) -> Estimate:
    """Certified bound of Lip(model) on the l2 ball B(x, eps) only (a LOCAL constant).

    The LipSDP-neuron certificate with each neuron's slopes restricted to their range over
    the ball (``slopes.local_slopes``); valid for pairs of inputs inside the ball, not
    globally. ``x``: one input (any shape with input_shape's size). ``kwargs`` go to ``solve``.
    """
    eps = check_number(eps, "eps")
    t0 = time.perf_counter()
    if (mlp_chain(model, tuple(x.shape)) is None and x.dim() > 1
            and mlp_chain(model, tuple(x.shape[1:])) is not None):
        raise ValueError(f"local_upper_bound takes one input, not a batch: x has shape "
                         f"{tuple(x.shape)}; pass x[0] (shape {tuple(x.shape[1:])}), one call "
                         f"per input")
    chain = require_chain(model, tuple(x.shape), "local_upper_bound")
    cert, status, steps = solve(chain, slopes=local_slopes(chain, x, eps), output=output,
                                **kwargs)
    return Estimate(cert.value, "upper", f"local LipSDP-neuron certificate on the l2 ball of "
                    f"radius {eps:g}", steps, None, time.perf_counter() - t0,
                    f"status {status}, verified in float64")


def sdp_estimate(model: nn.Module, input_shape: Sequence[int], **kwargs) -> Estimate | None:
    """The LipSDP-neuron upper estimate for ``bracket``.

    None when the model is not an MLP (convolutional networks keep the product bound). When
    no certificate is obtained (solver failure, verification failure), an Estimate of kind
    ``"skipped"`` with value NaN and the status in its note: never a number. ``kwargs`` go to
    ``lipsdp_upper_bound``.
    """
    if mlp_chain(model, input_shape) is None:
        return None
    t0 = time.perf_counter()
    try:
        return lipsdp_upper_bound(model, input_shape, **kwargs)
    except CertificateError as exc:
        return Estimate(math.nan, "skipped", METHOD, 0, None, time.perf_counter() - t0,
                        f"no certificate: {exc} (status {exc.status})")
    except torch.linalg.LinAlgError as exc:  # e.g. weights of 1e200: eigh does not converge
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Estimate(math.nan, "skipped", METHOD, 0, None, time.perf_counter() - t0,
                        f"no certificate: linear algebra failed ({first})")

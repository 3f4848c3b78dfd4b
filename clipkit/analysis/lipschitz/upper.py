"""Certified upper bounds: products of exact layer norms, and the merged MLP bound."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from clipkit.analysis.lipschitz.estimate import Estimate, LayerBound
from clipkit.analysis.lipschitz.structure import (
    AVGPOOLS,
    BATCHNORMS,
    CONVS,
    ISOMETRIES,
    MAXPOOLS,
    PADS,
    activation_slopes,
    batchnorm_parts,
    check_supported,
    float64_copy,
    model_layers,
    seeded_generator,
)
from clipkit.core.utils import device_dtype, eval_mode


def _margin(n: int, k: int, delta: float) -> float:
    """Relative margin eps on lambda_max after k Lanczos steps (Kuczynski & Wozniakowski 1992).

    With a start vector uniform on the sphere of R^n, k Lanczos steps underestimate the
    largest eigenvalue of a symmetric PSD matrix by a relative error > eps with probability
    at most 1.648 sqrt(n) exp(-sqrt(eps) (2k - 1)), whatever the spectrum (no gap needed).
    Setting that to delta: eps = (ln(1.648 sqrt(n) / delta) / (2k - 1))^2.
    """
    if k >= n:  # the Krylov space is all of R^n: the Ritz value is exact
        return 0.0
    return min(1.0, (math.log(1.648 * math.sqrt(n) / delta) / (2 * k - 1)) ** 2)


def operator_norm(
    forward: Callable[[Tensor], Tensor],
    adjoint: Callable[[Tensor], Tensor],
    shape: Sequence[int],
    *,
    iters: int = 100,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    delta: float = 1e-6,
) -> tuple[float, float, int]:
    """||A||_2 of a linear operator given as functions, by Lanczos on A^T A.

    Lanczos is power iteration's Krylov refinement: after k products v -> A^T A v from a
    random start, the largest Ritz value theta satisfies theta <= ||A||^2, and (see
    ``_margin``) ||A||^2 <= theta / (1 - eps) except with probability delta over the start.
    Full re-orthogonalisation keeps float64 Lanczos close to exact arithmetic. Hand-written
    (not scipy's eigsh) to keep the operator on the torch device.

    Returns:
        (sqrt(theta), sqrt(theta / (1 - eps)), k): the estimate, the certified bound, iterations.
    """
    n = math.prod(shape)
    k_max = min(iters, n)
    q = torch.randn(*shape, generator=generator, dtype=dtype, device=device).reshape(-1)
    q = q / q.norm()
    basis = torch.empty(k_max, n, dtype=dtype, device=device)  # preallocated Krylov basis
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(k_max):
        w = adjoint(forward(q.reshape(shape))).reshape(-1)
        alphas.append(float(q @ w))
        basis[j] = q
        Q = basis[: j + 1]
        for _ in range(2):  # re-orthogonalise twice ("twice is enough")
            w = w - Q.T @ (Q @ w)
        b = float(w.norm())
        scale = max(abs(a) for a in alphas)
        if b <= 1e-12 * max(scale, 1e-300):  # invariant subspace: the Ritz values are exact
            break
        betas.append(b)
        q = w / b
    k = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    theta = max(float(torch.linalg.eigvalsh(T)[-1]), 0.0)
    eps = 0.0 if len(betas) < k or k >= n else _margin(n, k, delta)
    est = math.sqrt(theta)
    bound = est / math.sqrt(1.0 - eps) if eps < 1.0 else math.inf
    return est, bound, k


def _linear_part(m: nn.Module) -> Callable[[Tensor], Tensor]:
    """x -> A x for an affine layer x -> A x + b (the bias dropped exactly, not subtracted)."""
    if isinstance(m, CONVS):
        return lambda v: m._conv_forward(v, m.weight, None)
    return m  # pooling layers have no bias


def _layer_operator_norm(
    m: nn.Module, in_shape: tuple[int, ...], iters: int, generator: torch.Generator,
    delta: float, device: torch.device,
) -> tuple[float, float, int]:
    """Operator norm of a linear layer (conv, avg-pool) on the input shape (1, *in_shape)."""
    m64 = float64_copy(m)
    fwd = _linear_part(m64)
    shape = (1, *in_shape)
    # The adjoint is the transpose of the true operator (e.g. conv_transpose with the same
    # stride/padding/dilation), taken by autograd on a graph built once: exact for any padding.
    x = torch.zeros(shape, dtype=torch.float64, device=device, requires_grad=True)
    y = fwd(x)

    def adj(u: Tensor) -> Tensor:
        return torch.autograd.grad(y, x, u, retain_graph=True)[0]

    with torch.enable_grad():
        return operator_norm(
            lambda v: fwd(v), adj, shape, iters=iters, generator=generator,
            device=device, delta=delta,
        )


def _coverage_1d(length: int, kernel: int, stride: int, padding: int, dilation: int,
                 out_len: int) -> int:
    """max over input positions of the number of pooling windows that contain it (one axis)."""
    counts = [0] * length
    for o in range(out_len):
        for t in range(kernel):
            i = o * stride - padding + t * dilation
            if 0 <= i < length:
                counts[i] += 1
    return max(counts) if counts else 0


def _maxpool_constant(m: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> float:
    """Lip of max pooling in l2: sqrt(max_i n_i), n_i = number of windows containing input i.

    |max_W x - max_W x'| <= max_{i in W} |x_i - x'_i|, so ||y - y'||^2 <= sum_W max_{i in W} d_i^2
    <= sum_W sum_{i in W} d_i^2 = sum_i n_i d_i^2 <= max_i n_i ||d||^2. The bound is attained
    (x = 0, x' = t e_i with i the most covered position), so it is the exact constant: 1 for
    non-overlapping windows (stride >= kernel), but e.g. sqrt(9) = 3 for a 3x3 kernel with
    stride 1, and up to prod_axes ceil(k / s) in general. Windows are products of 1-D windows,
    so n_i factorises over the axes and is counted per axis (padding and ceil_mode included,
    through the actual output length).
    """
    nd = len(out_shape) - 1  # spatial dimensions (in_shape is (C, *spatial))

    def tup(v: int | Sequence[int]) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, tuple | list) else (int(v),) * nd

    k, s = tup(m.kernel_size), tup(m.stride if m.stride is not None else m.kernel_size)
    p, d = tup(m.padding), tup(m.dilation)
    cover = 1
    for ax in range(nd):
        cover *= _coverage_1d(in_shape[1 + ax], k[ax], s[ax], p[ax], d[ax], out_shape[1 + ax])
    return math.sqrt(cover)


def layer_norms(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    iters: int = 100,
    seed: int = 0,
    delta: float = 1e-6,
) -> list[LayerBound]:
    """Each layer's l2 Lipschitz constant on the shape it actually receives.

    Linear: ||W||_2 by SVD (exact). Conv / AvgPool: Lanczos on the true operator A^T A
    (forward = the layer without bias, adjoint by autograd), bound = estimate / sqrt(1 - eps).
    BatchNorm (eval): max_c |gamma_c| / sqrt(var_c + eps). MaxPool: sqrt(max window coverage).
    Flatten / Unflatten / Dropout (eval) / Identity / ConstantPad (ZeroPad): 1. Activations:
    max(|lo|, |hi|) of their slope interval (see ``activation_slopes``).

    Raises:
        UnsupportedModuleError: for any layer outside this list, naming it.
    """
    leaves = model_layers(model)
    for name, m in leaves:
        check_supported(name, m)
    device, dtype = device_dtype(model)
    gen = seeded_generator(seed, device)
    out: list[LayerBound] = []
    x = torch.zeros(1, *input_shape, dtype=dtype, device=device)
    with eval_mode(model), torch.no_grad():
        for name, m in leaves:
            in_shape = tuple(x.shape[1:])
            y = m(x)
            kind = type(m).__name__
            if isinstance(m, nn.Linear):
                v = matrix_norm(m.weight.detach().to(torch.float64))
                out.append(LayerBound(name, kind, in_shape, v, v, "eigvalsh of W W^T (exact)"))
            elif isinstance(m, CONVS + AVGPOOLS):
                with torch.enable_grad():
                    est, bound, k = _layer_operator_norm(m, in_shape, iters, gen, delta, device)
                out.append(LayerBound(
                    name, kind, in_shape, est, bound,
                    f"Lanczos on the layer's operator, +certified margin (delta={delta:g})", k,
                ))
            elif isinstance(m, BATCHNORMS):
                v = float(batchnorm_parts(m)[0].abs().max())
                out.append(LayerBound(name, kind, in_shape, v, v, "max |gamma|/sqrt(var+eps)"))
            elif isinstance(m, MAXPOOLS):
                v = _maxpool_constant(m, in_shape, tuple(y.shape[1:]))
                out.append(LayerBound(name, kind, in_shape, v, v, "sqrt(max window coverage)"))
            elif isinstance(m, ISOMETRIES):
                out.append(LayerBound(name, kind, in_shape, 1.0, 1.0, "isometry / identity"))
            elif isinstance(m, PADS):
                out.append(LayerBound(name, kind, in_shape, 1.0, 1.0,
                                      "constant padding: each entry copied once"))
            else:
                lo, hi = activation_slopes(m)  # type: ignore[misc]
                v = max(abs(lo), abs(hi))
                out.append(LayerBound(name, kind, in_shape, v, v, f"slopes in [{lo:g}, {hi:g}]"))
            x = y
    return out


def matrix_norm(W: Tensor) -> float:
    """||W||_2 = sqrt(lambda_max(W W^T)) on the smaller Gram matrix, float64 LAPACK eigvalsh.

    Exact up to rounding (relative ~1e-15 at the top of the spectrum) and several times faster
    than an SVD of W.
    """
    if W.numel() == 0:
        return 0.0
    W = W.to(torch.float64)
    # scaled by its largest entry first: squaring an entry below ~1e-154 (or above 1e154)
    # would underflow to 0 (overflow to inf) in the Gram matrix, and the norm with it
    scale = float(W.abs().max())
    if scale == 0.0 or not math.isfinite(scale):
        return scale
    W = W / scale
    G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
    return scale * math.sqrt(max(float(torch.linalg.eigvalsh(G)[-1]), 0.0))


# The product bound loses nothing to rounding in practice (float64 throughout); this relative
# slack covers the last few ulps so that an exactly tight case (a linear map) stays >= lower.
ROUNDING_SLACK = 1e-9


def lipschitz_upper(
    model: nn.Module, input_shape: Sequence[int], *, iters: int = 100, seed: int = 0,
    delta: float = 1e-6,
) -> tuple[Estimate, list[LayerBound]]:
    """Upper bound prod_l Lip(layer_l) (see ``layer_norms``)."""
    t0 = time.perf_counter()
    layers = layer_norms(model, input_shape, iters=iters, seed=seed, delta=delta)
    value = math.prod(lb.bound for lb in layers) * (1 + ROUNDING_SLACK)
    k = sum(lb.iterations for lb in layers)
    margin = any(lb.bound > lb.estimate for lb in layers)
    note = f"{len(layers)} layers" + (f"; Lanczos margins hold w.p. >= 1-{delta:g} each"
                                      if margin else "")
    est = Estimate(value, "upper", "product of layer norms", k, seed,
                   time.perf_counter() - t0, note)
    return est, layers


def merged_upper_bound(model: nn.Module, input_shape: Sequence[int]) -> Estimate | None:
    """A tighter MLP bound, merging the linear maps around each activation; None if not an MLP.

    For f = A_m s_m A_{m-1} ... s_1 A_0 (A_j affine, s_j elementwise with difference quotients
    in [lo_j, hi_j]), f(x) - f(x') = A_m D_m ... D_1 A_0 (x - x') exactly, with D_j diagonal,
    entries in [lo_j, hi_j]. Write D_j = c_j I + r_j S_j, c = (lo + hi)/2, r = (hi - lo)/2,
    ||S_j|| <= 1, and expand the product: each term picks c_j I (merging A_j and A_{j-1}) or
    r_j S_j (splitting there), so

        Lip(f) <= sum_{T subset of splits} prod_{j not in T} |c_j| prod_{j in T} r_j
                                          prod_{segments} ||A_b ... A_a||_2

    (Combettes & Pesquet 2019 for ReLU-like c = r = 1/2). Every term is <= the plain product's,
    and the terms sum to it at most, so this is never worse. Evaluated in O(m^2) by dynamic
    programming over the last split: P(j) = C(0, j) N(0, j) + sum_i P(i-1) r_i C(i, j) N(i, j),
    with C(i, j) = prod_{i<l<=j} |c_l|, N(i, j) = ||A_j ... A_i||.
    """
    leaves = model_layers(model)
    for name, m in leaves:
        check_supported(name, m)
    device, dtype = device_dtype(model)
    n_in = math.prod(input_shape)
    blocks: list[Tensor] = [torch.eye(n_in, dtype=torch.float64, device=device)]
    acts: list[tuple[float, float]] = []
    x = torch.zeros(1, *input_shape, dtype=dtype, device=device)
    with eval_mode(model), torch.no_grad():
        for _, m in leaves:
            if x.ndim != 2 and not isinstance(m, nn.Flatten | nn.Identity):
                return None  # not acting on feature vectors: not an MLP
            if isinstance(m, nn.Linear):
                blocks[-1] = m.weight.detach().double() @ blocks[-1]
            elif isinstance(m, nn.BatchNorm1d):
                blocks[-1] = batchnorm_parts(m)[0][:, None] * blocks[-1]
            elif isinstance(m, (*ISOMETRIES, nn.Identity)):
                pass  # Flatten of (N, ...) to (N, n) or Dropout in eval: the identity on vectors
            elif activation_slopes(m) is not None:
                acts.append(activation_slopes(m))  # type: ignore[arg-type]
                width = m(x).shape[1] if x.ndim == 2 else n_in
                blocks.append(torch.eye(width, dtype=torch.float64, device=device))
            else:
                return None
            x = m(x)
    nb = len(blocks)
    norms = [[0.0] * nb for _ in range(nb)]  # norms[i][j] = ||A_j ... A_i||
    for i in range(nb):
        prod = blocks[i]
        norms[i][i] = matrix_norm(prod)
        for j in range(i + 1, nb):
            prod = blocks[j] @ prod
            norms[i][j] = matrix_norm(prod)
    mid = [abs(lo + hi) / 2 for lo, hi in acts]  # activation l sits between blocks l and l+1
    rad = [(hi - lo) / 2 for lo, hi in acts]

    def c(i: int, j: int) -> float:  # prod of |c_l| for the activations strictly inside i..j
        return math.prod(mid[i:j])

    P = [0.0] * nb
    for j in range(nb):
        P[j] = c(0, j) * norms[0][j] + sum(
            P[i - 1] * rad[i - 1] * c(i, j) * norms[i][j] for i in range(1, j + 1)
        )
    return Estimate(P[-1] * (1 + ROUNDING_SLACK), "upper",
                    "merged MLP bound (Combettes-Pesquet splitting, exact norms)", 0, None, 0.0,
                    f"{len(acts)} activations")

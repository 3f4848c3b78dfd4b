"""Lipschitz estimators: a bracket [lower, upper] of Lip(f), and exact values where computable.

Lip(f) = sup_{x != x'} ||f(x) - f(x')||_2 / ||x - x'||_2, on flattened tensors, for the model in
eval mode (BatchNorm uses its running statistics, Dropout is the identity).

Lower bounds (every one is attained by some input, so it can never exceed Lip(f)):
  * ``quotient_search``  adversarial difference-quotient search (CLIP's pair ascent, run long);
  * ``jacobian_norms``   sigma_max(J_f(x)) at the samples (torch.func);
  * ``random_quotients`` quotients of random perturbations of the samples.
The values reported are re-evaluated in float64, so float32 cancellation in f(u) - f(v) for close
pairs can not inflate a lower bound.

Upper bounds (need the model to be a (nested) ``nn.Sequential`` of supported layers):
  * ``layer_norms`` / product: Lip(f) <= prod_l Lip(layer_l), each layer's l2 operator norm on
    the actual input shape;
  * ``merged_upper_bound``: for MLPs, a bound that merges the linear maps around each
    activation (always <= the product).

What "upper" certifies: Linear and BatchNorm norms are exact (float64 eigenvalues), max-pool
and activation constants are exact formulas. Conv and average-pool norms come from Lanczos
(power iteration's Krylov refinement) on the true operator, which converges from below; the
bound used is estimate / sqrt(1 - eps) with the gap-free Kuczynski-Wozniakowski margin eps, so
each such layer's bound holds except with probability delta (default 1e-6) over the random
start (see ``operator_norm``). A relative 1e-9 slack covers float64 rounding.

``bracket`` runs all of them; ``exact`` gives the exact constant of linear maps and of 1-D-input
piecewise-linear networks (and a stated-as-such grid value for smooth 1-D networks).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = [
    "Bracket",
    "Estimate",
    "LayerBound",
    "UnsupportedModuleError",
    "activation_slopes",
    "bracket",
    "exact",
    "jacobian_norms",
    "layer_norms",
    "lipschitz_upper",
    "merged_upper_bound",
    "operator_norm",
    "quotient_search",
    "random_quotients",
]


class UnsupportedModuleError(TypeError):
    """A module whose Lipschitz constant clipkit can not bound (named in the message)."""


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Estimate:
    """One estimate of Lip(f).

    Attributes:
        value: the number.
        kind: ``"lower"``, ``"upper"``, ``"exact"`` or ``"grid"`` (a fine-grid value, no
            certificate).
        method: how it was obtained.
        iterations: ascent steps / power or Lanczos iterations / grid points (0 if none).
        seed: seed of the torch.Generator used (None if deterministic).
        seconds: wall time.
        note: anything else worth knowing (margins, sample counts, ...).
    """

    value: float
    kind: str
    method: str
    iterations: int = 0
    seed: int | None = None
    seconds: float = 0.0
    note: str = ""

    def __str__(self) -> str:
        extra = f", {self.note}" if self.note else ""
        seed = "" if self.seed is None else f", seed {self.seed}"
        return (
            f"{self.kind:>5} {self.value:.6g}  {self.method} "
            f"({self.iterations} it{seed}, {self.seconds:.3g} s{extra})"
        )


@dataclass(frozen=True)
class LayerBound:
    """The Lipschitz constant of one layer inside the product bound.

    ``estimate`` is the computed operator norm (for power/Lanczos: from below); ``bound`` is what
    enters the product (the estimate plus its certified margin; equal when exact).
    """

    name: str
    module: str
    input_shape: tuple[int, ...]
    estimate: float
    bound: float
    method: str
    iterations: int = 0


@dataclass(frozen=True)
class Bracket:
    """lower <= Lip(f) <= upper, with the estimates they come from."""

    lower: float
    upper: float
    lower_by: Estimate
    upper_by: Estimate
    estimates: tuple[Estimate, ...]
    layers: tuple[LayerBound, ...] = field(default=())

    @property
    def ratio(self) -> float:
        """upper / lower (inf when lower is 0)."""
        return self.upper / self.lower if self.lower > 0 else math.inf

    def __repr__(self) -> str:
        lines = [
            f"Bracket(lower={self.lower:.6g}, upper={self.upper:.6g}, "
            f"upper/lower={self.ratio:.4g})",
            f"  lower by: {self.lower_by.method}",
            f"  upper by: {self.upper_by.method}",
            "  estimates:",
        ]
        lines += [f"    {e}" for e in self.estimates]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.train(flag)


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(iter(model.parameters()), None)
    if p is None:
        p = next(iter(model.buffers()), None)
    if p is None:
        return torch.device("cpu"), torch.get_default_dtype()
    return p.device, p.dtype


def _float64(model: nn.Module) -> nn.Module:
    """A float64 copy of the model, in eval mode, without parameter gradients."""
    m64 = copy.deepcopy(model).to(torch.float64).eval()
    for p in m64.parameters():
        p.requires_grad_(False)
    return m64


def _generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _flat_norm(t: Tensor) -> Tensor:
    """Per-sample l2 norm of a batch (norm over all dimensions but the first)."""
    return t.reshape(t.shape[0], -1).norm(dim=1)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _check_search(pairs: int, steps: int, restarts: int) -> None:
    for name, val, least in (("pairs", pairs, 1), ("steps", steps, 0), ("restarts", restarts, 1)):
        if isinstance(val, bool) or not isinstance(val, int) or val < least:
            raise ValueError(f"{name} must be an int >= {least}, got {val!r}")


def _check_samples(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(
            "x must be a tensor of sample inputs with a leading batch dimension "
            f"(shape (N, *input_shape), N >= 1); got {getattr(x, 'shape', type(x))}"
        )
    if not torch.isfinite(x).all():
        raise ValueError("x contains non-finite values")


# ----------------------------------------------------------------------------- activations

#: Elementwise activations: the interval [lo, hi] that every difference quotient
#: (s(a) - s(b)) / (a - b) lies in. Lip = max(|lo|, |hi|).
_PIECEWISE_LINEAR = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Identity)


def activation_slopes(module: nn.Module) -> tuple[float, float] | None:
    """[lo, hi] containing every difference quotient of an elementwise activation, else None.

    ReLU, ReLU6, Hardtanh: [0, 1]; LeakyReLU(a): [min(a, 1), max(a, 1)]; Sigmoid: [0, 1/4];
    Tanh, Softplus: [0, 1]; ELU(a): [min(a, 0), max(a, 1)]; Identity: [1, 1].
    """
    if isinstance(module, nn.Identity):
        return (1.0, 1.0)
    if isinstance(module, nn.ReLU | nn.ReLU6 | nn.Hardtanh | nn.Tanh | nn.Softplus):
        return (0.0, 1.0)
    if isinstance(module, nn.Sigmoid):
        return (0.0, 0.25)
    if isinstance(module, nn.LeakyReLU):
        a = float(module.negative_slope)
        return (min(a, 1.0), max(a, 1.0))
    if isinstance(module, nn.ELU):
        a = float(module.alpha)
        return (min(a, 0.0), max(a, 1.0))
    return None


def _kinks(module: nn.Module) -> tuple[float, ...]:
    """Breakpoints of a piecewise-linear activation."""
    if isinstance(module, nn.Identity):
        return ()
    if isinstance(module, nn.ReLU | nn.LeakyReLU):
        return (0.0,)
    if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        return (float(module.min_val), float(module.max_val))
    raise UnsupportedModuleError(f"{type(module).__name__} is not piecewise linear")


# ----------------------------------------------------------------------------- structure

_ISOMETRIES = (
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_AVGPOOLS = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
_MAXPOOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_SUPPORTED = "Linear, Conv1d/2d/3d, BatchNorm1d/2d/3d (eval, running stats), AvgPool, " \
    "AdaptiveAvgPool, MaxPool, Flatten, Unflatten, Dropout, Identity, ReLU, ReLU6, LeakyReLU, " \
    "Hardtanh, Sigmoid, Tanh, Softplus, ELU, and nested nn.Sequential of these"


def _leaves(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The layers of a (nested) nn.Sequential in execution order, with their dotted names."""
    if isinstance(model, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for name, child in model.named_children():
            out += _leaves(child, f"{prefix}.{name}" if prefix else name)
        return out
    if next(iter(model.children()), None) is not None:
        raise UnsupportedModuleError(
            f"module {prefix or '<model>'} ({type(model).__name__}) has submodules and a custom "
            "forward; only nested nn.Sequential containers can be bounded layer by layer. "
            f"Supported: {_SUPPORTED}"
        )
    return [(prefix or "<model>", model)]


def _check_supported(name: str, m: nn.Module) -> None:
    ok = isinstance(m, (nn.Linear, *_ISOMETRIES, *_CONVS, *_AVGPOOLS, *_MAXPOOLS, *_BATCHNORMS))
    if not ok and activation_slopes(m) is None:
        raise UnsupportedModuleError(
            f"unsupported module {name} ({type(m).__name__}): no Lipschitz bound known to "
            f"clipkit. Supported: {_SUPPORTED}"
        )
    if isinstance(m, _BATCHNORMS) and (m.running_var is None or m.running_mean is None):
        raise UnsupportedModuleError(
            f"module {name} ({type(m).__name__}) has track_running_stats=False: in eval mode it "
            "still normalises by batch statistics, which is not a fixed affine map"
        )
    if isinstance(m, _MAXPOOLS) and getattr(m, "return_indices", False):
        raise UnsupportedModuleError(f"module {name} (MaxPool with return_indices=True)")


# ----------------------------------------------------------------------------- operator norms


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
    if isinstance(m, _CONVS):
        return lambda v: m._conv_forward(v, m.weight, None)
    return m  # pooling layers have no bias


def _layer_operator_norm(
    m: nn.Module, in_shape: tuple[int, ...], iters: int, generator: torch.Generator,
    delta: float, device: torch.device,
) -> tuple[float, float, int]:
    """Operator norm of a linear layer (conv, avg-pool) on the input shape (1, *in_shape)."""
    m64 = _float64(m)
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
    Flatten / Unflatten / Dropout (eval) / Identity: 1. Activations: max(|lo|, |hi|) of their
    slope interval (see ``activation_slopes``).

    Raises:
        UnsupportedModuleError: for any layer outside this list, naming it.
    """
    leaves = _leaves(model)
    for name, m in leaves:
        _check_supported(name, m)
    device, dtype = _device_dtype(model)
    gen = _generator(seed, device)
    out: list[LayerBound] = []
    x = torch.zeros(1, *input_shape, dtype=dtype, device=device)
    with _eval_mode(model), torch.no_grad():
        for name, m in leaves:
            in_shape = tuple(x.shape[1:])
            y = m(x)
            kind = type(m).__name__
            if isinstance(m, nn.Linear):
                v = _matrix_norm(m.weight.detach().to(torch.float64))
                out.append(LayerBound(name, kind, in_shape, v, v, "eigvalsh of W W^T (exact)"))
            elif isinstance(m, _CONVS + _AVGPOOLS):
                with torch.enable_grad():
                    est, bound, k = _layer_operator_norm(m, in_shape, iters, gen, delta, device)
                out.append(LayerBound(
                    name, kind, in_shape, est, bound,
                    f"Lanczos on the layer's operator, +certified margin (delta={delta:g})", k,
                ))
            elif isinstance(m, _BATCHNORMS):
                w = m.weight if m.weight is not None else torch.ones_like(m.running_var)
                scale = w.detach().double() / torch.sqrt(m.running_var.double() + m.eps)
                v = float(scale.abs().max())
                out.append(LayerBound(name, kind, in_shape, v, v, "max |gamma|/sqrt(var+eps)"))
            elif isinstance(m, _MAXPOOLS):
                v = _maxpool_constant(m, in_shape, tuple(y.shape[1:]))
                out.append(LayerBound(name, kind, in_shape, v, v, "sqrt(max window coverage)"))
            elif isinstance(m, _ISOMETRIES):
                out.append(LayerBound(name, kind, in_shape, 1.0, 1.0, "isometry / identity"))
            else:
                lo, hi = activation_slopes(m)  # type: ignore[misc]
                v = max(abs(lo), abs(hi))
                out.append(LayerBound(name, kind, in_shape, v, v, f"slopes in [{lo:g}, {hi:g}]"))
            x = y
    return out


def _matrix_norm(W: Tensor) -> float:
    """||W||_2 = sqrt(lambda_max(W W^T)) on the smaller Gram matrix, float64 LAPACK eigvalsh.

    Exact up to rounding (relative ~1e-15 at the top of the spectrum) and several times faster
    than an SVD of W.
    """
    if W.numel() == 0:
        return 0.0
    W = W.to(torch.float64)
    G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
    return math.sqrt(max(float(torch.linalg.eigvalsh(G)[-1]), 0.0))


# The product bound loses nothing to rounding in practice (float64 throughout); this relative
# slack covers the last few ulps so that an exactly tight case (a linear map) stays >= lower.
_ROUNDING_SLACK = 1e-9


def lipschitz_upper(
    model: nn.Module, input_shape: Sequence[int], *, iters: int = 100, seed: int = 0,
    delta: float = 1e-6,
) -> tuple[Estimate, list[LayerBound]]:
    """Upper bound prod_l Lip(layer_l) (see ``layer_norms``)."""
    t0 = time.perf_counter()
    layers = layer_norms(model, input_shape, iters=iters, seed=seed, delta=delta)
    value = math.prod(lb.bound for lb in layers) * (1 + _ROUNDING_SLACK)
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
    leaves = _leaves(model)
    for name, m in leaves:
        _check_supported(name, m)
    device, dtype = _device_dtype(model)
    n_in = math.prod(input_shape)
    blocks: list[Tensor] = [torch.eye(n_in, dtype=torch.float64, device=device)]
    acts: list[tuple[float, float]] = []
    x = torch.zeros(1, *input_shape, dtype=dtype, device=device)
    with _eval_mode(model), torch.no_grad():
        for _, m in leaves:
            if x.ndim != 2 and not isinstance(m, nn.Flatten | nn.Identity):
                return None  # not acting on feature vectors: not an MLP
            if isinstance(m, nn.Linear):
                blocks[-1] = m.weight.detach().double() @ blocks[-1]
            elif isinstance(m, nn.BatchNorm1d):
                w = m.weight if m.weight is not None else torch.ones_like(m.running_var)
                s = w.detach().double() / torch.sqrt(m.running_var.double() + m.eps)
                blocks[-1] = s[:, None] * blocks[-1]
            elif isinstance(m, (*_ISOMETRIES, nn.Identity)):
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
        norms[i][i] = _matrix_norm(prod)
        for j in range(i + 1, nb):
            prod = blocks[j] @ prod
            norms[i][j] = _matrix_norm(prod)
    mid = [abs(lo + hi) / 2 for lo, hi in acts]  # activation l sits between blocks l and l+1
    rad = [(hi - lo) / 2 for lo, hi in acts]

    def c(i: int, j: int) -> float:  # prod of |c_l| for the activations strictly inside i..j
        return math.prod(mid[i:j])

    P = [0.0] * nb
    for j in range(nb):
        P[j] = c(0, j) * norms[0][j] + sum(
            P[i - 1] * rad[i - 1] * c(i, j) * norms[i][j] for i in range(1, j + 1)
        )
    return Estimate(P[-1] * (1 + _ROUNDING_SLACK), "upper",
                    "merged MLP bound (Combettes-Pesquet splitting, exact norms)", 0, None, 0.0,
                    f"{len(acts)} activations")


# ----------------------------------------------------------------------------- lower bounds


_MAX_DENSE = 2**22  # entries of one chunk's dense Jacobian above which power iteration is used


def jacobian_norms(
    model: nn.Module,
    x: Tensor,
    *,
    batch_size: int = 256,
    method: str = "auto",
    iters: int = 50,
    generator: torch.Generator | None = None,
    max_dense: int | None = None,
) -> Tensor:
    """sigma_max(J_f(x_i)) for each sample, each a lower bound of Lip(f) (where f is smooth).

    ``"dense"``: J by torch.func (vmap of jacrev) and its exact spectral norm. ``"power"``:
    power iteration v <- J^T J v / ||J^T J v|| with torch.func.jvp and vjp on the batch (J is
    block diagonal over samples in eval mode), sigma = sqrt(<v, J^T J v>) <= sigma_max.
    ``"auto"``: dense when one chunk's Jacobian has at most ``max_dense`` entries.

    Samples must be processed independently (true in eval mode for the supported layers). At a
    kink of a ReLU/max-pool, autograd's one-sided choice is used; samples hit kinks with
    probability 0, so this is not guarded against.
    """
    _check_samples(x)
    _check_batch_size(batch_size)
    if method not in ("auto", "dense", "power"):
        raise ValueError(f"method must be 'auto', 'dense' or 'power', got {method!r}")
    device, _ = _device_dtype(model)
    x = x.to(device)
    max_dense = _MAX_DENSE if max_dense is None else max_dense
    out: list[Tensor] = []
    with _eval_mode(model):
        n_out = model(x[:1]).numel()
        n_in = x[0].numel()
        use_dense = method == "dense" or (
            method == "auto" and min(batch_size, len(x)) * n_out * n_in <= max_dense
        )
        for xb in x.split(batch_size):
            if use_dense:
                def f1(xi: Tensor) -> Tensor:
                    return model(xi.unsqueeze(0)).reshape(-1)

                J = torch.func.vmap(torch.func.jacrev(f1))(xb).reshape(len(xb), n_out, n_in)
                out.append(_spectral_norms(J.detach()))
            else:
                out.append(_jacobian_power(model, xb, iters, generator))
    return torch.cat(out)


def _spectral_norms(J: Tensor) -> Tensor:
    """sigma_max of each matrix in a batch: sqrt(lambda_max(J J^T)) on the smaller Gram matrix.

    Formed in float64, so squaring costs no accuracy at the top of the spectrum; far faster
    than a batched SVD of the (out x in) Jacobians.
    """
    J = J.to(torch.float64)
    G = J @ J.transpose(1, 2) if J.shape[1] <= J.shape[2] else J.transpose(1, 2) @ J
    return torch.linalg.eigvalsh(G)[:, -1].clamp_min(0).sqrt().to(J.device)


def _jacobian_power(model: nn.Module, xb: Tensor, iters: int,
                    generator: torch.Generator | None) -> Tensor:
    """Batched power iteration on J_i^T J_i (one vector per sample)."""
    v = torch.randn(xb.shape, generator=generator, dtype=xb.dtype, device=xb.device)
    v = v / _flat_norm(v).view(-1, *[1] * (xb.ndim - 1))
    _, vjp_fn = torch.func.vjp(model, xb)
    sig2 = torch.zeros(len(xb), dtype=xb.dtype, device=xb.device)
    for _ in range(iters):
        _, jv = torch.func.jvp(model, (xb,), (v,))
        (w,) = vjp_fn(jv)
        sig2 = (v * w).reshape(len(xb), -1).sum(1)
        nw = _flat_norm(w).clamp_min(torch.finfo(xb.dtype).tiny)
        v = w / nw.view(-1, *[1] * (xb.ndim - 1))
    return sig2.clamp_min(0).sqrt().detach()


def _quotients(model: nn.Module, u: Tensor, v: Tensor, batch_size: int) -> Tensor:
    """||f(u_k) - f(v_k)|| / ||u_k - v_k|| per pair (no gradient), in chunks."""
    out = []
    with torch.no_grad():
        for ub, vb in zip(u.split(batch_size), v.split(batch_size), strict=True):
            num = _flat_norm(model(ub) - model(vb))
            out.append(num / _flat_norm(ub - vb))
    return torch.cat(out)


def _verify64(model64: nn.Module, u: Tensor, v: Tensor, batch_size: int) -> Tensor:
    """The quotients re-evaluated in float64 (what is reported)."""
    dev = next(iter(model64.parameters()), torch.empty(0)).device
    return _quotients(model64, u.to(dev, torch.float64), v.to(dev, torch.float64), batch_size)


def quotient_search(
    model: nn.Module,
    x: Tensor,
    *,
    pairs: int = 256,
    steps: int = 100,
    restarts: int = 2,
    init_radius: float = 0.1,
    step_size: float = 0.1,
    min_distance: float = 1e-3,
    domain: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> tuple[float, Tensor, Tensor]:
    """Adversarial difference-quotient search: max_k ||f(u_k) - f(v_k)|| / ||u_k - v_k||.

    CLIP's pair ascent run long. Each restart draws ``pairs`` pairs from the samples: half
    (x_i, x_i + init_radius * std(x) * xi), xi ~ N(0, I), half (x_i, x_j) with i != j. Each
    step moves (u, v) along the normalised gradient g of the quotient by
    tau_k * ||u_k - v_k|| (the quotient is scale free in the pair's distance, so the raw
    gradient, ~ 1/||u - v||, would make a fixed tau explode or stall); tau_k *= 1.3 when the
    pair's quotient rose, otherwise the step is rejected and tau_k /= 1.3. Pairs are kept
    ``min_distance * rms(x)`` apart (closer pairs only measure rounding) and in ``domain`` if
    given. The best pairs' quotients are re-evaluated in float64.

    Self-contained (no clipkit.clip import) so clip.py may share it.

    Returns:
        (best quotient in float64, u, v) of the best pair.
    """
    _check_samples(x)
    _check_batch_size(batch_size)
    _check_search(pairs, steps, restarts)
    device, dtype = _device_dtype(model)
    x = x.to(device, dtype)
    n = len(x)
    scale = float(x.std()) if x.numel() > 1 and float(x.std()) > 0 else 1.0
    rms = float(_flat_norm(x).pow(2).mean().sqrt()) or 1.0
    dmin = min_distance * rms
    best_q, best_u, best_v = -1.0, x[0], x[0]
    lo, hi = domain if domain is not None else (None, None)
    model64 = _float64(model)
    with _eval_mode(model):
        for _ in range(restarts):
            i = torch.randint(n, (pairs,), generator=generator, device=device)
            j = torch.randint(n, (pairs,), generator=generator, device=device)
            noise = torch.randn((pairs, *x.shape[1:]), generator=generator, device=device,
                                dtype=dtype) * (init_radius * scale)
            near = torch.arange(pairs, device=device) < (pairs + 1) // 2
            if n < 2:
                near[:] = True
            near |= i == j
            u0 = x[i]
            v0 = torch.where(near.view(-1, *[1] * (x.ndim - 1)), x[i] + noise, x[j])
            for s in range(0, pairs, batch_size):
                u, v = _ascend(model, u0[s:s + batch_size], v0[s:s + batch_size], steps,
                               step_size, dmin, lo, hi)
                q64 = _verify64(model64, u, v, batch_size)
                k = int(q64.argmax())
                if float(q64[k]) > best_q:
                    best_q, best_u, best_v = float(q64[k]), u[k], v[k]
    return best_q, best_u.detach(), best_v.detach()


def _ascend(model: nn.Module, u: Tensor, v: Tensor, steps: int, step_size: float, dmin: float,
            lo: float | None, hi: float | None) -> tuple[Tensor, Tensor]:
    """Per-pair adaptive normalised-gradient ascent of the quotients (see quotient_search)."""
    bshape = (-1, *[1] * (u.ndim - 1))

    def value_grad(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = a.detach().requires_grad_(True)
        b = b.detach().requires_grad_(True)
        with torch.enable_grad():
            q = _flat_norm(model(a) - model(b)) / _flat_norm(a - b)
            ga, gb = torch.autograd.grad(q.sum(), (a, b))
        return q.detach(), ga, gb

    if lo is not None:
        u, v = u.clamp(lo, hi), v.clamp(lo, hi)
    q, ga, gb = value_grad(u, v)
    tau = torch.full_like(q, step_size)
    for _ in range(steps):
        gnorm = (_flat_norm(ga).pow(2) + _flat_norm(gb).pow(2)).sqrt().clamp_min(1e-30)
        length = (tau * _flat_norm(u - v) / gnorm).view(bshape)
        u1, v1 = u + length * ga, v + length * gb
        if lo is not None:
            u1, v1 = u1.clamp(lo, hi), v1.clamp(lo, hi)
        q1, ga1, gb1 = value_grad(u1, v1)
        ok = (q1 > q) & (_flat_norm(u1 - v1) >= dmin) & torch.isfinite(q1)
        okb = ok.view(bshape)
        u, v = torch.where(okb, u1, u), torch.where(okb, v1, v)
        ga, gb = torch.where(okb, ga1, ga), torch.where(okb, gb1, gb)
        q = torch.where(ok, q1, q)
        tau = torch.where(ok, tau * 1.3, tau / 1.3)
    return u.detach(), v.detach()


def random_quotients(
    model: nn.Module,
    x: Tensor,
    *,
    directions: int = 8,
    radii: Sequence[float] = (1e-3, 1e-2, 1e-1),
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    verify_top: int = 16,
) -> float:
    """max over samples, radii r and random unit directions d of ||f(x + r s d) - f(x)|| / (r s).

    s = rms ||x_i||. Computed in the model's dtype; the ``verify_top`` largest are re-evaluated in
    float64 and the largest of those is returned.
    """
    _check_samples(x)
    _check_batch_size(batch_size)
    device, dtype = _device_dtype(model)
    x = x.to(device, dtype)
    s = float(_flat_norm(x).pow(2).mean().sqrt()) or 1.0
    # keep only the running top candidates, so memory does not grow with samples x directions
    top_q = torch.empty(0, device=device, dtype=dtype)
    top_u = top_v = torch.empty(0, *x.shape[1:], device=device, dtype=dtype)
    with _eval_mode(model):
        for r in radii:
            for _ in range(directions):
                for xb in x.split(batch_size):
                    d = torch.randn(xb.shape, generator=generator, device=device, dtype=dtype)
                    vb = xb + (r * s) * d / _flat_norm(d).view(-1, *[1] * (x.ndim - 1))
                    q = torch.cat([top_q, _quotients(model, xb, vb, batch_size)])
                    keep = q.topk(min(verify_top, len(q))).indices
                    top_q = q[keep]
                    top_u, top_v = torch.cat([top_u, xb])[keep], torch.cat([top_v, vb])[keep]
    u, v = top_u, top_v
    return float(_verify64(_float64(model), u, v, batch_size).max())


# ----------------------------------------------------------------------------- bracket


def bracket(
    model: nn.Module,
    x: Tensor,
    *,
    seed: int = 0,
    batch_size: int = 256,
    pairs: int = 128,
    steps: int = 50,
    restarts: int = 2,
    directions: int = 4,
    jacobian: str = "auto",
    jacobian_iters: int = 50,
    lanczos_iters: int = 100,
    delta: float = 1e-6,
    domain: tuple[float, float] | None = None,
) -> Bracket:
    """Bracket Lip(model) (eval mode, l2 on flattened tensors) from the samples ``x``.

    lower = max(quotient search, max_i sigma_max(J(x_i)), random quotients);
    upper = min(product of layer norms, merged MLP bound when the model is an MLP).
    Both bound the global constant (over all inputs); ``domain`` only keeps the search's pairs
    in a box (e.g. the image range), which still gives a valid lower bound.

    Args:
        model: a (nested) nn.Sequential of supported layers (see ``layer_norms``).
        x: sample inputs, shape (N, *input_shape), moved to the model's device.
        seed: seeds one torch.Generator used for every random choice.
        batch_size: chunk size for every batched evaluation (bounds the memory).
        pairs, steps, restarts, domain: for ``quotient_search``.
        directions: random directions per sample and radius, for ``random_quotients``.
        jacobian, jacobian_iters: method and power iterations for ``jacobian_norms``.
        lanczos_iters, delta: iterations and failure probability for conv/pool layer norms.
    """
    _check_samples(x)
    _check_batch_size(batch_size)
    _check_search(pairs, steps, restarts)
    device, dtype = _device_dtype(model)
    x = x.to(device)
    gen = _generator(seed, device)
    estimates: list[Estimate] = []

    t0 = time.perf_counter()
    upper, layers = lipschitz_upper(model, tuple(x.shape[1:]), iters=lanczos_iters, seed=seed,
                                    delta=delta)
    estimates.append(upper)
    t0 = time.perf_counter()
    merged = merged_upper_bound(model, tuple(x.shape[1:]))
    if merged is not None:
        estimates.append(_timed(merged, t0))

    t0 = time.perf_counter()
    sig = jacobian_norms(model, x, batch_size=batch_size, method=jacobian,
                         iters=jacobian_iters, generator=gen)
    top = sig.topk(min(4, len(sig))).indices
    sig64 = jacobian_norms(_float64(model), x[top].to(device, torch.float64),
                           batch_size=batch_size, method=jacobian, iters=4 * jacobian_iters,
                           generator=_generator(seed, device))
    with _eval_mode(model), torch.no_grad():
        n_out = model(x[:1]).numel()
    dense = jacobian == "dense" or (
        jacobian == "auto" and min(batch_size, len(x)) * n_out * x[0].numel() <= _MAX_DENSE)
    estimates.append(Estimate(float(sig64.max()), "lower", "max Jacobian spectral norm",
                              0 if dense else jacobian_iters, seed, time.perf_counter() - t0,
                              f"{len(x)} samples ({'dense' if dense else 'power'}), "
                              "top 4 in float64"))

    # The search starts from the samples where the Jacobian is largest: the quotient of a
    # close pair there already nears sigma_max(J), so fewer steps find more.
    t0 = time.perf_counter()
    starts = x[sig.topk(min(pairs, len(sig))).indices]
    q, _, _ = quotient_search(model, starts, pairs=pairs, steps=steps, restarts=restarts,
                              domain=domain, generator=gen, batch_size=batch_size)
    estimates.append(Estimate(q, "lower", "adversarial quotient search", steps * restarts, seed,
                              time.perf_counter() - t0,
                              f"{pairs} pairs x {restarts} restarts from the top-Jacobian "
                              "samples, float64-verified"))

    t0 = time.perf_counter()
    r = random_quotients(model, x, directions=directions, generator=gen, batch_size=batch_size)
    estimates.append(Estimate(r, "lower", "random-perturbation quotients", directions, seed,
                              time.perf_counter() - t0, f"{directions} directions x 3 radii"))

    lower_by = max((e for e in estimates if e.kind == "lower"), key=lambda e: e.value)
    upper_by = min((e for e in estimates if e.kind == "upper"), key=lambda e: e.value)
    return Bracket(lower_by.value, upper_by.value, lower_by, upper_by, tuple(estimates),
                   tuple(layers))


def _timed(e: Estimate, t0: float) -> Estimate:
    return Estimate(e.value, e.kind, e.method, e.iterations, e.seed,
                    time.perf_counter() - t0, e.note)


# ----------------------------------------------------------------------------- exact


def exact(
    model: nn.Module,
    interval: tuple[float, float] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    grid_points: int = 100_001,
    batch_size: int = 4096,
) -> Estimate:
    """Lip(model) where it is computable.

    * Linear maps (only Linear/Conv/BatchNorm/pooling-by-average/Flatten/Dropout layers): the
      spectral norm of the composed matrix, formed densely in float64 (``interval`` ignored).
    * 1-D input, piecewise-linear activations (ReLU, LeakyReLU, ReLU6, Hardtanh): f is
      piecewise affine on ``interval``; its breakpoints are found layer by layer (where a
      pre-activation, affine between the current breakpoints, crosses a kink), and
      Lip = max over pieces of ||f'(midpoint)||, kind ``"exact"``.
    * 1-D input, other supported activations: max ||f'(t)|| on ``grid_points`` equally spaced
      points, kind ``"grid"`` (an approximation from below, not a certificate).

    Raises:
        ValueError: bad interval, or input dimension != 1 for a nonlinear network.
        UnsupportedModuleError: unsupported layers (same list as the bracket).
    """
    t0 = time.perf_counter()
    leaves = _leaves(model)
    for name, m in leaves:
        _check_supported(name, m)
    device, _ = _device_dtype(model)
    m64 = _float64(model)
    nonlinear = [m for _, m in leaves
                 if (activation_slopes(m) is not None and not isinstance(m, nn.Identity))
                 or isinstance(m, _MAXPOOLS)]
    if input_shape is None:
        first = next((m for _, m in leaves if isinstance(m, (nn.Linear, *_CONVS))), None)
        if isinstance(first, nn.Linear):
            input_shape = (first.in_features,)
        else:
            raise ValueError("input_shape is required unless the first layer is nn.Linear")
    input_shape = tuple(input_shape)
    if not nonlinear:
        x0 = torch.zeros(input_shape, dtype=torch.float64, device=device)

        def f1(xi: Tensor) -> Tensor:
            return m64(xi.unsqueeze(0)).reshape(-1)

        J = torch.func.jacrev(f1)(x0).reshape(-1, x0.numel())
        return Estimate(_matrix_norm(J), "exact", "spectral norm of the linear map",
                        0, None, time.perf_counter() - t0)
    if math.prod(input_shape) != 1:
        raise ValueError(
            f"exact() handles nonlinear networks with 1-D input only; input shape {input_shape}"
        )
    if (interval is None or len(interval) != 2
            or not all(math.isfinite(float(t)) for t in interval)
            or not float(interval[0]) < float(interval[1])):
        raise ValueError(f"interval must be a finite (a, b) with a < b, got {interval!r}")
    a, b = float(interval[0]), float(interval[1])

    def f(t: Tensor) -> Tensor:  # t: (N,) -> (N, out)
        return m64(t.reshape(-1, *input_shape)).reshape(len(t), -1)

    def slopes(t: Tensor) -> Tensor:  # ||f'(t)|| for each t
        out = []
        for tb in t.split(batch_size):
            J = torch.func.vmap(torch.func.jacrev(lambda s: f(s.reshape(1))[0]))(tb)
            out.append(J.reshape(len(tb), -1).norm(dim=1))
        return torch.cat(out)

    if all(isinstance(m, _PIECEWISE_LINEAR) for m in nonlinear):
        leaves64 = _leaves(m64)
        ts = torch.tensor([a, b], dtype=torch.float64, device=device)
        with torch.no_grad():
            for idx, (_, m) in enumerate(leaves):
                if not isinstance(m, _PIECEWISE_LINEAR) or isinstance(m, nn.Identity):
                    continue
                z = ts.reshape(-1, *input_shape)
                for _, prev in leaves64[:idx]:
                    z = prev(z)
                z = z.reshape(len(ts), -1)  # pre-activations: affine between consecutive ts
                new = [ts]
                for k in _kinks(m):
                    z0, z1 = z[:-1] - k, z[1:] - k
                    cross = (z0 * z1) < 0
                    t0s, t1s = ts[:-1, None].expand_as(z0), ts[1:, None].expand_as(z0)
                    tc = t0s - z0 * (t1s - t0s) / (z1 - z0)
                    new.append(tc[cross])
                ts = torch.unique(torch.cat(new))  # sorted
        mids = (ts[:-1] + ts[1:]) / 2
        s = slopes(mids)
        return Estimate(float(s.max()), "exact",
                        "piecewise linear: max slope over the pieces between breakpoints",
                        len(mids), None, time.perf_counter() - t0,
                        f"{len(ts) - 2} breakpoints in [{a:g}, {b:g}]")
    grid = torch.linspace(a, b, grid_points, dtype=torch.float64, device=device)
    s = slopes(grid)
    return Estimate(float(s.max()), "grid", f"max |f'| on a grid of {grid_points} points "
                    "(smooth activations: an approximation from below, not a certificate)",
                    grid_points, None, time.perf_counter() - t0, f"interval [{a:g}, {b:g}]")

"""Lower bounds, each attained by some input: Jacobian norms, adversarial and random quotients."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from clipkit.analysis.lipschitz.kinks import kink_hits
from clipkit.analysis.lipschitz.structure import (
    check_batch_size,
    check_samples,
    check_search,
    float64_copy,
    hook_weights_kept,
)
from clipkit.core.pairs import AscentRule, PairState, ascend, quotients_from, stacked, value
from clipkit.core.utils import check_int, device_dtype, eval_mode, flat_norm, sqrt_nonneg

MAX_DENSE = 2**22  # entries of one chunk's dense Jacobian above which power iteration is used


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
    check_samples(x)
    check_batch_size(batch_size)
    if method not in ("auto", "dense", "power"):
        raise ValueError(f"method must be 'auto', 'dense' or 'power', got {method!r}")
    device, _ = device_dtype(model)
    x = x.to(device)
    max_dense = MAX_DENSE if max_dense is None else max_dense
    out: list[Tensor] = []
    with eval_mode(model), hook_weights_kept(model):
        n_out = model(x[:1]).numel()
        n_in = x[0].numel()
        use_dense = method == "dense" or (
            method == "auto" and min(batch_size, len(x)) * n_out * n_in <= max_dense
        )
        for xb in x.split(batch_size):
            if use_dense:
                out.append(_spectral_norms(dense_jacobians(model, xb).detach()))
            else:
                out.append(_jacobian_power(model, xb, iters, generator))
    return torch.cat(out)


def jacobian_ascent(
    model: nn.Module,
    starts: Tensor,
    *,
    steps: int = 100,
    lr: float = 0.05,
    domain: tuple[float, float] | None = None,
    taken: list[int] | None = None,
) -> Tensor:
    """sigma_max(J_f(x_i)) after Adam ascent on the inputs x_i, from ``starts`` (float64).

    Each step computes the dense Jacobians (torch.func: vmap of jacrev) of a float64 copy of
    the model, sigma_i = sqrt(lambda_max(J_i J_i^T)), and moves every x_i by one Adam step on
    -sum_i sigma_i (projected onto the box ``domain`` when given). Like the Jacobian norm at
    a sample, sigma_max(J_f(x)) <= Lip(f) wherever f is smooth at x, so every returned value
    is an attained lower bound of the global constant; the ascent finds inputs away from the
    data where the slope is larger. The norms are those at the final inputs. Dense
    Jacobians: meant for a few starts (the bracket uses its top-Jacobian samples). For
    piecewise-linear nets (ReLU) J is piecewise constant and the ascent does not move: it
    stops at its first gradient, which is 0; for affine maps it stops at once. ``taken``: a
    list that gets the number of Adam steps applied appended (what the bracket reports).
    """
    check_samples(starts)
    steps = check_int(steps, "steps", 0)
    model64 = float64_copy(model)
    device, _ = device_dtype(model64)

    def norms(v: Tensor) -> Tensor:  # differentiable in v: the ascent's objective
        return _spectral_norms(dense_jacobians(model64, v))

    v = starts.detach().to(device, torch.float64).clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    with eval_mode(model64):
        made = 0  # Adam steps applied
        for step in range(steps):
            objective = norms(v).sum()
            if not objective.requires_grad:  # J does not depend on x (an affine map)
                break
            (grad,) = torch.autograd.grad(-objective, v, allow_unused=True)
            # a piecewise-linear net (ReLU, max pooling): J is constant on each piece, its
            # gradient 0 and Adam, from rest, does not move at all; the remaining steps
            # would repeat this one (on a ReLU CNN they were 60-75 % of the bracket's time)
            if grad is None or (step == 0 and not bool(grad.any())):
                break
            v.grad = grad
            opt.step()
            made += 1
            if domain is not None:
                with torch.no_grad():
                    v.clamp_(*domain)
        reached = v.detach()
        if taken is not None:
            taken.append(made)
        return confirmed_norms(model64, reached, norms(reached).detach())


#: at a point where a kink is hit, a Jacobian norm stands where a close pair along its top
#: direction confirms this share of it
CONFIRM_SHARE = 1 - 1e-3
#: that pair's half distance, relative to 1 + ||x||
CONFIRM_STEP = 1e-7


def confirmed_norms(model64: nn.Module, x: Tensor, sigma: Tensor, batch_size: int = 256,
                    seed: int = 0) -> Tensor:
    """sigma_i = sigma_max(J_f(x_i)), checked at the points where a kink is hit.

    At a kink autograd takes a one-sided derivative per neuron; with several neurons at
    their kinks at once, that combination need not be the slope of any piece of f:
    relu(t + 10) - relu(t) + relu(-t) - relu(-t - 10) is constant, while its autograd
    derivative at 0 is 1 (a tie in a max-pooling window is such a kink too). Where no
    pre-activation sits exactly at a kink and no window has a tie (``kink_hits``; always,
    for smooth networks) J is the derivative of f near x and sigma stands. Where one does,
    three pairs along J's top right singular vector v decide, x ± hv and the one-sided
    (x, x + hv), (x − hv, x) (h = 1e-7 (1 + ||x||)): sigma stands if the largest of their
    float64-verified quotients reaches 0.999 sigma. A one-sided pair sees the slope of the
    piece on its side, which the symmetric pair averages with the other side's. Else the
    larger of that quotient and the Jacobian norm at a random point x + hu (u a random unit
    vector, ``seed``) where nothing sits at a kink is returned, each attained: with many
    ties (a max pooling over an image's flat background) the pieces around x are many, and
    one at random is often steeper along its own top direction than any pair along v.
    ``model64``: a float64 model (``float64_copy``).
    """
    x = x.detach().to(torch.float64)
    hit = kink_hits(model64, x).to(sigma.device)
    if not bool(hit.any()):
        return sigma
    xs = x[hit.to(x.device)]
    with eval_mode(model64):
        J = dense_jacobians(model64, xs).detach()
    v = torch.linalg.svd(J, full_matrices=False).Vh[:, 0].reshape(xs.shape)
    h = (CONFIRM_STEP * (1 + flat_norm(xs))).view(-1, *[1] * (xs.ndim - 1))
    q = torch.stack([_verify64(model64, xs + h * v, xs - h * v, batch_size),
                     _verify64(model64, xs + h * v, xs, batch_size),
                     _verify64(model64, xs, xs - h * v, batch_size)]).amax(dim=0)
    q = q.to(sigma.device, sigma.dtype)
    near = _nearby_norms(model64, xs, h, seed).to(sigma.device, sigma.dtype)
    out = sigma.clone()
    out[hit] = torch.where(q >= CONFIRM_SHARE * sigma[hit], sigma[hit], torch.maximum(q, near))
    return out


def _nearby_norms(model64: nn.Module, xs: Tensor, h: Tensor, seed: int) -> Tensor:
    """sigma_max(J_f) at x_i + h_i u_i, u_i a random unit vector; 0 where that point hits a
    kink as well (then it is not known to be a slope of f)."""
    gen = torch.Generator(device=xs.device).manual_seed(seed)
    u = torch.randn(xs.shape, generator=gen, dtype=xs.dtype, device=xs.device)
    u = u / flat_norm(u).clamp_min(1e-300).view(-1, *[1] * (xs.ndim - 1))
    near = xs + h * u
    with eval_mode(model64):
        norms = torch.linalg.matrix_norm(dense_jacobians(model64, near).detach(), ord=2)
    return torch.where(kink_hits(model64, near), torch.zeros_like(norms), norms)


def dense_jacobians(model: nn.Module, x: Tensor) -> Tensor:
    """J_f(x_i) for each sample, (N, outputs, inputs), by torch.func (vmap of jacrev);
    differentiable in x."""
    shape = x.shape[1:]

    def f1(xi: Tensor) -> Tensor:
        return model(xi.reshape(1, *shape)).reshape(-1)

    return torch.func.vmap(torch.func.jacrev(f1))(x).reshape(len(x), -1, x[0].numel())


def _spectral_norms(J: Tensor) -> Tensor:
    """sigma_max of each matrix in a batch: sqrt(lambda_max(J J^T)) on the smaller Gram matrix.

    Formed in float64, so squaring costs no accuracy at the top of the spectrum; far faster
    than a batched SVD of the (out x in) Jacobians.
    """
    J = J.to(torch.float64)
    G = J @ J.transpose(1, 2) if J.shape[1] <= J.shape[2] else J.transpose(1, 2) @ J
    return sqrt_nonneg(torch.linalg.eigvalsh(G)[:, -1]).to(J.device)  # differentiable at 0


def _jacobian_power(model: nn.Module, xb: Tensor, iters: int,
                    generator: torch.Generator | None) -> Tensor:
    """Batched power iteration on J_i^T J_i (one vector per sample)."""
    v = torch.randn(xb.shape, generator=generator, dtype=xb.dtype, device=xb.device)
    v = v / flat_norm(v).view(-1, *[1] * (xb.ndim - 1))
    _, vjp_fn = torch.func.vjp(model, xb)
    sig2 = torch.zeros(len(xb), dtype=xb.dtype, device=xb.device)
    with warnings.catch_warnings():
        # torch's first forward-mode call registers its decompositions with torch.jit.script,
        # which warns of its own deprecation (a FutureWarning on torch 2.14, a
        # DeprecationWarning on 2.11): nothing the caller could act on
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* deprecated")
        for _ in range(iters):
            _, jv = torch.func.jvp(model, (xb,), (v,))
            (w,) = vjp_fn(jv)
            sig2 = (v * w).reshape(len(xb), -1).sum(1)
            nw = flat_norm(w).clamp_min(torch.finfo(xb.dtype).tiny)
            v = w / nw.view(-1, *[1] * (xb.ndim - 1))
    return sig2.clamp_min(0).sqrt().detach()


def _quotients(model: nn.Module, u: Tensor, v: Tensor, batch_size: int) -> Tensor:
    """||f(u_k) - f(v_k)|| / ||u_k - v_k|| per pair (no gradient), in chunks."""
    forward = stacked(model)
    return torch.cat([value(forward, ub[None], vb[None])[0]
                      for ub, vb in zip(u.split(batch_size), v.split(batch_size), strict=True)])


#: the float64 rounding allowed for in ||f(u) - f(v)||, relative to ||f(u)|| + ||f(v)||
ROUNDING_ALLOWANCE = 2.0**-46


def _verify64(model64: nn.Module, u: Tensor, v: Tensor, batch_size: int) -> Tensor:
    """The quotients re-evaluated in float64, less a rounding allowance (what is reported):
    (||f(u) - f(v)|| − 2^-46 (||f(u)|| + ||f(v)||))⁺ / ||u − v||. Without it, pairs so close
    that f(u) − f(v) is mostly rounding of values ~1 reported quotients above the certified
    upper bound (a net with weights 1e-3: 9.6e-13 against 9.4e-13)."""
    dev = next(iter(model64.parameters()), torch.empty(0)).device
    u, v = u.to(dev, torch.float64), v.to(dev, torch.float64)
    forward = stacked(model64)
    out = []
    with torch.no_grad():
        for ub, vb in zip(u.split(batch_size), v.split(batch_size), strict=True):
            f = forward(torch.cat([ub[None], vb[None]], dim=1))  # one forward per chunk
            q = quotients_from(f, ub[None], vb[None])[0]
            size = flat_norm(f[0, :len(ub)]) + flat_norm(f[0, len(ub):])
            dist = flat_norm(ub - vb).clamp_min(1e-300)
            out.append((q - ROUNDING_ALLOWANCE * size / dist).clamp_min(0.0))
    return torch.cat(out)


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

    CLIP's pair ascent (``clipkit.core.pairs.ascend``) run long. Each restart draws
    ``pairs`` pairs from the samples: half (x_i, x_i + init_radius * std(x) * xi),
    xi ~ N(0, I), half (x_i, x_j) with i != j. Each step moves (u, v) along the normalised
    gradient of the quotient by tau_k * ||u_k - v_k|| (the rule ``step="normalized"``);
    tau_k *= 1.3 when the pair's quotient rose, otherwise the step is rejected and
    tau_k /= 1.3. Pairs are kept ``min_distance * rms(x)`` apart (closer pairs only measure
    rounding) and in ``domain`` if given. The best pairs' quotients are re-evaluated in
    float64.

    Returns:
        (best quotient in float64, u, v) of the best pair.
    """
    check_samples(x)
    check_batch_size(batch_size)
    check_search(pairs, steps, restarts)
    device, dtype = device_dtype(model)
    x = x.to(device, dtype)
    n = len(x)
    scale = float(x.std()) if x.numel() > 1 and float(x.std()) > 0 else 1.0
    rms = float(flat_norm(x).pow(2).mean().sqrt()) or 1.0
    dmin = min_distance * rms
    best_q, best_u, best_v = -1.0, x[0], x[0]
    rule = AscentRule(step="normalized", clamp=domain, min_distance=dmin, rtol=0.0)
    forward = stacked(model)
    model64 = float64_copy(model)
    with eval_mode(model):
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
                u, v = u0[s:s + batch_size], v0[s:s + batch_size]
                if domain is not None:
                    u, v = u.clamp(*domain), v.clamp(*domain)
                tau = torch.full(u.shape[:1], float(step_size), dtype=dtype, device=device)
                found = ascend(forward, PairState(u[None], v[None], tau[None]), steps, rule)
                u, v = found.u[0], found.v[0]
                q64 = _verify64(model64, u, v, batch_size)
                k = int(q64.argmax())
                if float(q64[k]) > best_q:
                    best_q, best_u, best_v = float(q64[k]), u[k], v[k]
    return best_q, best_u.detach(), best_v.detach()


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
    check_samples(x)
    check_batch_size(batch_size)
    device, dtype = device_dtype(model)
    x = x.to(device, dtype)
    s = float(flat_norm(x).pow(2).mean().sqrt()) or 1.0
    # keep only the running top candidates, so memory does not grow with samples x directions
    top_q = torch.empty(0, device=device, dtype=dtype)
    top_u = top_v = torch.empty(0, *x.shape[1:], device=device, dtype=dtype)
    with eval_mode(model):
        for r in radii:
            for _ in range(directions):
                for xb in x.split(batch_size):
                    d = torch.randn(xb.shape, generator=generator, device=device, dtype=dtype)
                    vb = xb + (r * s) * d / flat_norm(d).view(-1, *[1] * (x.ndim - 1))
                    q = torch.cat([top_q, _quotients(model, xb, vb, batch_size)])
                    keep = q.topk(min(verify_top, len(q))).indices
                    top_q = q[keep]
                    top_u, top_v = torch.cat([top_u, xb])[keep], torch.cat([top_v, vb])[keep]
    u, v = top_u, top_v
    return float(_verify64(float64_copy(model), u, v, batch_size).max())

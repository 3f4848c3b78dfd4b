"""The bracket lower <= Lip(f) <= upper from every estimator."""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from clipkit.analysis.lipschitz.estimate import Bracket, BracketContradiction, Estimate
from clipkit.analysis.lipschitz.lower import (
    MAX_DENSE,
    confirmed_norms,
    jacobian_ascent,
    jacobian_norms,
    quotient_search,
    random_quotients,
)
from clipkit.analysis.lipschitz.preactivation import GUIDED as PRE_GUIDED
from clipkit.analysis.lipschitz.preactivation import STARTS as PRE_STARTS
from clipkit.analysis.lipschitz.preactivation import STEPS as PRE_STEPS
from clipkit.analysis.lipschitz.preactivation import preactivation_ascent
from clipkit.analysis.lipschitz.sdp import sdp_estimate
from clipkit.analysis.lipschitz.structure import (
    check_batch_size,
    check_samples,
    check_search,
    float64_copy,
    seeded_generator,
)
from clipkit.analysis.lipschitz.upper import lipschitz_upper, merged_upper_bound
from clipkit.core.utils import (
    check_int,
    check_model_takes,
    check_range,
    device_dtype,
    eval_mode,
)

#: relative excess of the lower over the upper bound taken for rounding, not contradiction
#: (the certificates already carry a relative 1e-9)
CONTRADICTION_RTOL = 1e-6


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
    sdp: bool = True,
    sdp_iters: int = 300,
    ascent_steps: int = 200,
    ascent_starts: int = 16,
    preactivation: bool = True,
    preactivation_starts: int = PRE_STARTS,
    preactivation_guided: int = PRE_GUIDED,
) -> Bracket:
    """Bracket Lip(model) (eval mode, l2 on flattened tensors) from the samples ``x``.

    lower = max(quotient search, max_i sigma_max(J(x_i)), the same after a Jacobian-norm
    ascent on the inputs, random quotients, and for MLPs without ``domain`` the Jacobian-norm
    ascent over the first pre-activations, which reaches steep regions far from the data);
    upper = min(product of layer norms, and when the model is an MLP the merged bound and the
    LipSDP-neuron certificate, ``sdp``). A LipSDP solve that yields no verified certificate
    is listed as a ``"skipped"`` estimate (NaN, status in its note), never used. Both bound
    the global constant (over all inputs); ``domain`` only keeps the search's pairs in a box
    (e.g. the image range), which still gives a valid lower bound.

    Args:
        model: a (nested) nn.Sequential of supported layers (see ``layer_norms``).
        x: sample inputs, shape (N, *input_shape), moved to the model's device and dtype.
        seed: seeds one torch.Generator used for every random choice.
        batch_size: chunk size for every batched evaluation (bounds the memory).
        pairs, steps, restarts, domain: for ``quotient_search``.
        directions: random directions per sample and radius, for ``random_quotients``.
        jacobian, jacobian_iters: method and power iterations for ``jacobian_norms``.
        ascent_steps, ascent_starts: Adam steps of ``jacobian_ascent`` from this many
            samples of largest Jacobian norm, kept in ``domain`` when given (0 steps: not
            run; also skipped where their dense Jacobians would exceed the dense limit).
            784-200-80-10 MLP: about 1 s on one core.
        preactivation: run ``preactivation.preactivation_ascent`` (MLPs whose first layer
            reaches every pre-activation, no ``domain``; 784-200-80-10: 1-3 s on one core).
        preactivation_starts, preactivation_guided: its number of random starts (time
            grows in proportion), and of further starts from its coupled proxy
            (``preactivation.guided_starts``: MLPs whose first two activations are sigmoid
            or tanh; about 0.3 s each on a 784-200-80-10 MLP, 3 s on 784-784-200-10, on
            2 cores). Where the steep regions are few and narrow, as on CLIP-trained
            networks, the value depends on the starts: measured on a CLIP-trained
            784-200-80-10 sigmoid MLP, 32 random starts reached 5.2-5.3 on 3 of 8 seeds
            and 3.5-3.75 on the others, 1 of 1,000 reached 6.3, and the 4 guided starts 7.3
            on every seed tried.
        lanczos_iters, delta: iterations and failure probability for conv/pool layer norms.
        sdp, sdp_iters: compute the LipSDP-neuron certificate for MLPs, with this L-BFGS
            budget per sharpness stage (784-200-80-10: seconds on one core; fewer iterations
            give a looser bound, never an uncertified one).
    """
    check_samples(x)
    check_batch_size(batch_size)
    check_search(pairs, steps, restarts)
    ascent_steps = check_int(ascent_steps, "ascent_steps", 0)
    ascent_starts = check_int(ascent_starts, "ascent_starts", 1)
    preactivation_starts = check_int(preactivation_starts, "preactivation_starts", 1)
    preactivation_guided = check_int(preactivation_guided, "preactivation_guided", 0)
    directions = check_int(directions, "directions", 1)
    jacobian_iters = check_int(jacobian_iters, "jacobian_iters", 1)
    lanczos_iters = check_int(lanczos_iters, "lanczos_iters", 1)
    if domain is not None:
        domain = check_range(domain, "domain")
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise ValueError(f"the model's parameters are not finite ({', '.join(bad[:3])} hold "
                         f"NaN or inf; e.g. from training that diverged): no bound applies")
    device, dtype = device_dtype(model)
    x = x.to(device, dtype)  # as ck.fit and ck.certify take data: in the model's dtype
    check_model_takes(model, x)
    gen = seeded_generator(seed, device)
    estimates: list[Estimate] = []

    t0 = time.perf_counter()
    upper, layers = lipschitz_upper(model, tuple(x.shape[1:]), iters=lanczos_iters, seed=seed,
                                    delta=delta)
    estimates.append(upper)
    t0 = time.perf_counter()
    merged = merged_upper_bound(model, tuple(x.shape[1:]))
    if merged is not None and math.isfinite(merged.value):  # NaN/inf certifies nothing
        estimates.append(_timed(merged, t0))
    if sdp:
        sdp_est = sdp_estimate(model, tuple(x.shape[1:]), iters=sdp_iters)
        if sdp_est is not None:
            estimates.append(sdp_est)

    t0 = time.perf_counter()
    sig = jacobian_norms(model, x, batch_size=batch_size, method=jacobian,
                         iters=jacobian_iters, generator=gen)
    top = sig.topk(min(4, len(sig))).indices
    model64 = float64_copy(model)
    x_top = x[top].to(device, torch.float64)
    sig64 = jacobian_norms(model64, x_top, batch_size=batch_size, method=jacobian,
                           iters=4 * jacobian_iters, generator=seeded_generator(seed, device))
    sig64 = confirmed_norms(model64, x_top, sig64, batch_size, seed)  # no kink's one-sided value
    with eval_mode(model), torch.no_grad():
        n_out = model(x[:1]).numel()
    dense = jacobian == "dense" or (
        jacobian == "auto" and min(batch_size, len(x)) * n_out * x[0].numel() <= MAX_DENSE)
    estimates.append(Estimate(float(sig64.max()), "lower", "max Jacobian spectral norm",
                              0 if dense else jacobian_iters, seed, time.perf_counter() - t0,
                              f"{len(x)} samples ({'dense' if dense else 'power'}), "
                              "top 4 in float64"))

    steepest = sig.topk(min(ascent_starts, len(sig))).indices
    if ascent_steps > 0 and len(steepest) * n_out * x[0].numel() <= MAX_DENSE:
        t0 = time.perf_counter()
        taken: list[int] = []
        asc = jacobian_ascent(model, x[steepest], steps=ascent_steps, domain=domain,
                              taken=taken)
        where = f" in [{domain[0]:g}, {domain[1]:g}]" if domain is not None else ""
        estimates.append(Estimate(float(asc.max()), "lower", "Jacobian-norm ascent",
                                  taken[0], seed, time.perf_counter() - t0,
                                  f"Adam on x{where} from the top {len(steepest)} samples, "
                                  "float64"))

    if preactivation and domain is None:
        t0 = time.perf_counter()
        pre = preactivation_ascent(model, tuple(x.shape[1:]), starts=preactivation_starts,
                                   seed=seed, guided=preactivation_guided)
        if pre is not None:
            guided = len(pre[0]) - preactivation_starts
            estimates.append(Estimate(float(pre[0].max()), "lower",
                                      "pre-activation Jacobian ascent", PRE_STEPS, seed,
                                      time.perf_counter() - t0,
                                      f"Adam on the first pre-activations from "
                                      f"{preactivation_starts} random starts"
                                      + (f" and {guided} guided ones" if guided else "")
                                      + "; the model's float64 Jacobian at the inputs "
                                      "reached"))

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
    if lower_by.value > upper_by.value * (1 + CONTRADICTION_RTOL):
        raise BracketContradiction(
            f"bracket: the attained lower bound {lower_by.value:.6g} ({lower_by.method}) "
            f"exceeds the certified upper bound {upper_by.value:.6g} ({upper_by.method}), "
            f"which cannot be for one function: the layers the bounds read do not compute what "
            f"the model's forward does, or an estimator is wrong. Please report it with the "
            f"model; nothing is returned")
    return Bracket(lower_by.value, upper_by.value, lower_by, upper_by, tuple(estimates),
                   tuple(layers))


def _timed(e: Estimate, t0: float) -> Estimate:
    return Estimate(e.value, e.kind, e.method, e.iterations, e.seed,
                    time.perf_counter() - t0, e.note)

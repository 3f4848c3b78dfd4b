"""Jacobian-norm ascent over an MLP's first pre-activations: attained lower bounds off the data.

For an MLP f = A_K s_K A_{K-1} ... s_1 A_0 (``chain``) whose first matrix W_0 (n_1 x n_0) has
rank n_1, every pre-activation vector z_1 in R^{n_1} is reached by an input,
x(z_1) = W_0^+ (z_1 - b_0), and the Jacobian there depends on z_1 alone:

    J(z_1) = W_K D_K W_{K-1} ... D_2 W_1 D_1 W_0,   D_k = diag(s_k'(z_k)),
    z_{k+1} = W_k s_k(z_k) + b_k.

So Lip(f) over R^{n_0} equals sup over z_1 of sigma_max(J(z_1)), and an ascent in these n_1
coordinates reaches the steep regions that an ascent in input space, started at data samples,
does not: a CLIP-trained network keeps its slope small near the data, not everywhere. With
G_0 = W_0 W_0^T, sigma_max(J)^2 = lambda_max(M G_0 M^T) for M = W_K D_K ... W_1 D_1, a small
matrix (outputs x n_1), so a step costs little more than the chain's forward.

Where the first two activations are sigmoid or tanh, a few starts are chosen by a coupled
proxy (``guided_starts``): which first-layer neurons to saturate so that second-layer neurons
can reach their steep region. On CLIP-trained networks the steep regions are few and narrow,
and random starts rarely land near them.

Every value returned is the model's own Jacobian norm at the input x(z_1), recomputed in
float64 by ``lower.jacobian_norms``: an attained lower bound of the global constant whatever
the ascent or the proxy did. Unconstrained inputs only (a box domain restricts the reachable
z_1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from clipkit.analysis.lipschitz.chain import MLPChain, mlp_chain
from clipkit.analysis.lipschitz.lower import confirmed_norms, jacobian_norms
from clipkit.analysis.lipschitz.slopes import global_slopes
from clipkit.analysis.lipschitz.structure import float64_copy
from clipkit.core.utils import check_int, one_thread, sqrt_nonneg

__all__ = ["GUIDED", "STARTS", "STEPS", "guided_starts", "preactivation_ascent", "reachable"]

#: default starts and Adam steps (784-200-80-10 sigmoid MLPs: the best value stops rising
#: by then; 1-3 s on one core)
STARTS, STEPS = 32, 500

#: scales of the random starting pre-activations (one start at z_1 = 0, the steepest point
#: of sigmoid and tanh, then cycling through these standard deviations)
START_SCALES = (0.5, 1.0, 2.0, 4.0)

#: default number of extra starts from the coupled proxy (``guided_starts``), and the
#: proxy's Adam steps. Measured on a CLIP-trained 784-200-80-10 sigmoid MLP (30 epochs): the
#: 4 guided starts ended at 7.27-7.32 with seeds 0 and 1, where 32 random starts reached
#: 3.5-5.3 and 1,000 random starts 6.3 once; 16 guided starts gave 7.33 (docs/lipschitz.md).
GUIDED, PROXY_STEPS = 4, 300

#: the sign search of a guided start evaluates all n_1 single flips per round, each costing
#: about outputs x n_1^2: at most this many rounds, and at most FLIP_BUDGET evaluations in all
#: (784-200-80-10: 32 rounds, which the searches measured never reached; n_1 = 784: 8 rounds,
#: about 2 s a start on 2 cores). Evaluated in chunks of FLIP_CHUNK candidates.
FLIP_ROUNDS, FLIP_BUDGET, FLIP_CHUNK = 32, 6400, 256

#: the activations the proxy handles, (E, kappa): s(z) - s(0) = E tanh(z / (2 kappa)), so
#: s'(z) = 4 E^2 sigmoid(z / kappa) sigmoid(-z / kappa) (sigmoid: E = 1/2, kappa = 1; tanh:
#: E = 1, kappa = 1/2)
_BOUNDED = {nn.Sigmoid: (0.5, 1.0), nn.Tanh: (1.0, 0.5)}


def reachable(chain: MLPChain) -> bool:
    """Whether every first pre-activation z_1 is attained by an input (rank W_0 = n_1)."""
    w0 = chain.weights[0]
    return bool(chain.acts) and w0.shape[0] <= w0.shape[1] and int(
        torch.linalg.matrix_rank(w0)) == w0.shape[0]


def _bounded(act: nn.Module) -> tuple[float, float] | None:
    return _BOUNDED.get(type(act))


def _norm_square(chain: MLPChain, ds: list[Tensor], gram0: Tensor) -> Tensor:
    """||W_K D_K ... W_1 D_1 W_0||^2 = lambda_max(M G_0 M^T), M = W_K D_K ... W_1 D_1, for
    per-layer slopes ``ds`` (each (S, n_k)): one value per batch entry."""
    m = chain.weights[-1].expand(len(ds[0]), -1, -1)
    for k in range(len(ds) - 1, -1, -1):
        m = m * ds[k][:, None, :]
        if k > 0:
            m = m @ chain.weights[k]
    return torch.linalg.eigvalsh(m @ gram0 @ m.transpose(1, 2))[:, -1]


def _log(square: Tensor) -> Tensor:
    """log sigma from sigma^2, what the proxy's ascent climbs: its values can be as small as
    1e-100 far from the steep regions, where Adam's eps would stall a step on sigma itself,
    and through a square root an exact 0 would give NaN gradients."""
    return 0.5 * square.clamp_min(1e-300).log()


def _derivative(act: nn.Module, z: Tensor) -> Tensor:
    """s'(z) elementwise, differentiable. Sigmoid and tanh in closed form,
    s'(z) = 4 E^2 sigmoid(z / kappa) sigmoid(-z / kappa), through logs: autograd's s(1 - s)
    rounds to 0 beyond |z| ~ 37 (sigmoid), and an ascent would get no gradient there."""
    bounded = _bounded(act)
    if bounded is not None:
        big_e, kappa = bounded
        return 4 * big_e**2 * torch.exp(F.logsigmoid(z / kappa) + F.logsigmoid(-z / kappa))
    (d,) = torch.autograd.grad(act(z).sum(), z, create_graph=True)
    return d


def _sigma(chain: MLPChain, z1: Tensor, gram0: Tensor) -> Tensor:
    """sigma_max(J(z_1)) for a batch of first pre-activations (S, n_1)."""
    return sqrt_nonneg(_square(chain, z1, gram0))  # 0 where the Jacobian vanishes, no NaN


def _square(chain: MLPChain, z1: Tensor, gram0: Tensor) -> Tensor:
    """sigma_max(J(z_1))^2 for a batch of first pre-activations (S, n_1), differentiable."""
    ds, z = [], z1
    for k, act in enumerate(chain.acts):
        s = act(z)
        ds.append(_derivative(act, z))  # s_k'(z_k), elementwise
        if k + 1 < len(chain.acts):
            z = s @ chain.weights[k + 1].T + chain.biases[k + 1]
    return _norm_square(chain, ds, gram0)


def _values(chain: MLPChain, z1: Tensor, gram0: Tensor) -> Tensor:
    """sigma_max(J(z_1)) without a graph."""
    return _sigma(chain, z1.detach().requires_grad_(True), gram0).detach()


def _climb(start: Tensor, objective, steps: int, lr: float) -> Tensor:
    """``steps`` Adam steps raising objective(z).sum() (one value per row) from ``start``."""
    z = start.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        (grad,) = torch.autograd.grad(-objective(z).sum(), z)
        z.grad = grad
        opt.step()
    return z.detach()


def guided_starts(chain: MLPChain, count: int, generator: torch.Generator,
                  gram0: Tensor | None = None) -> Tensor | None:
    """``count`` first pre-activations z_1 (count, n_1) chosen by a coupled proxy; None unless
    the MLP has two or more hidden layers and its first two activations are sigmoid or tanh.

    With a = s_1(z_1) = s_1(0) + e, |e_i| = E - 2E sigmoid(-|z_1,i| / kappa) depends on |z_1,i|
    alone, as does the first layer's slope d1_i = s_1'(|z_1,i|), and z_2 = c + W_1 e
    (c = W_1 s_1(0) + b_1): a second-layer neuron can be steep only where enough of the first
    layer is saturated (flat), |z_2,j| >= r_j = max(0, |c_j| - sum_i |W_1[j, i]| |e_i|). The
    proxy gives every second-layer neuron that most favourable case at once, d2_j = s_2'(r_j)
    (later layers: their top slope, ``slopes.global_slopes``), and Adam raises
    log ||W_K D_K ... W_1 D_1 W_0|| over the magnitudes |z_1| from random ones. No input need
    reach that proxy, so the signs of z_1 are then chosen on the real sigma_max(J(z_1)): first
    each against the steep neurons' c_j (sign -sum_j d2_j sign(c_j) W_1[j, i]), then single
    flips while one raises it. Only starting points: ``preactivation_ascent`` polishes them,
    and reports attained values.
    """
    if len(chain.acts) < 2:
        return None
    first, second = _bounded(chain.acts[0]), _bounded(chain.acts[1])
    if first is None or second is None:
        return None
    big_e, kappa = first
    w0, w1 = chain.weights[0], chain.weights[1]
    gram0 = w0 @ w0.T if gram0 is None else gram0
    center = chain.acts[0](torch.zeros(1, dtype=w1.dtype))
    c = w1 @ center.expand(w1.shape[1]) + chain.biases[1]
    # r = |c| - |W_1| e = (|c| - E |W_1| 1) + |W_1| (E - e): no cancellation near saturation
    r0 = c.abs() - big_e * w1.abs().sum(1)
    later = [hi for _, hi in global_slopes(chain)[2:]]

    def steep2(u: Tensor) -> Tensor:  # the proxy's second-layer slopes s_2'(r), (S, n_2)
        gap = 2 * big_e * torch.sigmoid(-u / kappa)  # E - |e|
        return _derivative(chain.acts[1], (r0 + gap @ w1.abs().T).clamp_min(0))

    def proxy(u: Tensor) -> Tensor:  # magnitudes (S, n_1) -> (S,), the norm's square
        ds = [_derivative(chain.acts[0], u), steep2(u), *[hi.expand(len(u), -1) for hi in later]]
        return _norm_square(chain, ds, gram0)

    n1 = w0.shape[0]
    u = torch.rand(count, n1, generator=generator, dtype=w1.dtype) * 4
    u = _climb(u, lambda v: _log(proxy(v.abs())), PROXY_STEPS, 0.1).abs()

    out = []
    flip = 1 - 2 * torch.eye(n1, dtype=w1.dtype)  # row i flips sign i
    for ui in u:
        sign = -torch.sign((steep2(ui[None])[0] * torch.sign(c)) @ w1)
        sign = torch.where(sign == 0, 1.0, sign)
        best = float(_values(chain, (sign * ui)[None], gram0)[0])
        for _ in range(max(1, min(FLIP_ROUNDS, FLIP_BUDGET // n1))):
            candidates = sign * flip
            v = torch.cat([_values(chain, chunk, gram0)
                           for chunk in (candidates * ui).split(FLIP_CHUNK)])
            k = int(v.argmax())
            if not float(v[k]) > best * (1 + 1e-9):
                break
            sign, best = candidates[k], float(v[k])
        out.append(sign * ui)
    return torch.stack(out)


def preactivation_ascent(model: nn.Module, input_shape: tuple[int, ...], *, starts: int = STARTS,
                         steps: int = STEPS, lr: float = 0.1, seed: int = 0,
                         guided: int = GUIDED) -> tuple[Tensor, Tensor] | None:
    """Attained sigma_max(J_f(x)) after Adam ascent on z_1 = W_0 x + b_0; (values, inputs).

    ``starts`` starting points: z_1 = 0, then Gaussian z_1 with the standard deviations of
    ``START_SCALES`` in turn (a generator seeded with ``seed``), and ``guided`` more from
    ``guided_starts`` where it applies (first two activations sigmoid or tanh; about 0.3 s
    each on a 784-200-80-10 MLP); ``steps`` Adam steps of learning rate ``lr`` on
    -sum_i sigma_max(J(z_1^i)). Returns the float64 Jacobian norms of the model at the inputs
    x(z_1) (shape (S,), S = starts, plus ``guided`` where it applies) and those inputs
    (S, *input_shape); None when the model is not an MLP, has no nonlinear activation, or W_0
    does not reach every z_1 (``reachable``). Linear algebra on one thread
    (``core.utils.one_thread``).
    """
    starts = check_int(starts, "starts", 1)
    steps = check_int(steps, "steps", 0)
    guided = check_int(guided, "guided", 0)
    chain = mlp_chain(model, input_shape)
    if chain is None or not reachable(chain):
        return None
    with one_thread():
        g = torch.Generator().manual_seed(seed)
        n1 = chain.weights[0].shape[0]
        scales = torch.tensor([0.0] + [START_SCALES[i % len(START_SCALES)]
                                       for i in range(starts - 1)], dtype=torch.float64)
        z = (torch.randn(starts, n1, generator=g, dtype=torch.float64) * scales[:, None])
        gram0 = chain.weights[0] @ chain.weights[0].T
        chosen = guided_starts(chain, guided, g, gram0) if guided else None
        if chosen is not None:
            z = torch.cat([z, chosen])
        z = _climb(z, lambda v: _sigma(chain, v, gram0), steps, lr)
        # the minimum-norm input with W_0 x + b_0 = z_1 (W_0 has full row rank)
        x = torch.linalg.pinv(chain.weights[0]) @ (z - chain.biases[0]).T
        x = x.T.reshape(len(z), *input_shape)
        model64 = float64_copy(model)
        values = confirmed_norms(model64, x, jacobian_norms(model64, x, method="dense"))
    return values, x

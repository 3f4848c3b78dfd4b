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

Every value returned is the model's own Jacobian norm at the input x(z_1), recomputed in
float64 by ``lower.jacobian_norms``: an attained lower bound of the global constant whatever
the ascent did. Unconstrained inputs only (a box domain restricts the reachable z_1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clipkit.analysis.lipschitz.chain import MLPChain, mlp_chain
from clipkit.analysis.lipschitz.lower import jacobian_norms
from clipkit.analysis.lipschitz.structure import float64_copy
from clipkit.core.utils import one_thread

__all__ = ["STARTS", "STEPS", "preactivation_ascent", "reachable"]

#: default starts and Adam steps (784-200-80-10 sigmoid MLPs: the best value stops rising
#: by then; 1-3 s on one core)
STARTS, STEPS = 32, 500

#: scales of the random starting pre-activations (one start at z_1 = 0, the steepest point
#: of sigmoid and tanh, then cycling through these standard deviations)
START_SCALES = (0.5, 1.0, 2.0, 4.0)


def reachable(chain: MLPChain) -> bool:
    """Whether every first pre-activation z_1 is attained by an input (rank W_0 = n_1)."""
    w0 = chain.weights[0]
    return bool(chain.acts) and w0.shape[0] <= w0.shape[1] and int(
        torch.linalg.matrix_rank(w0)) == w0.shape[0]


def _sigma(chain: MLPChain, z1: Tensor, gram0: Tensor) -> Tensor:
    """sigma_max(J(z_1)) for a batch of first pre-activations (S, n_1), differentiable."""
    ds, z = [], z1
    for k, act in enumerate(chain.acts):
        s = act(z)
        (d,) = torch.autograd.grad(s.sum(), z, create_graph=True)  # s_k'(z_k), elementwise
        ds.append(d)
        if k + 1 < len(chain.acts):
            z = s @ chain.weights[k + 1].T + chain.biases[k + 1]
    m = chain.weights[-1].expand(len(z1), -1, -1)
    for k in range(len(chain.acts) - 1, -1, -1):
        m = m * ds[k][:, None, :]
        if k > 0:
            m = m @ chain.weights[k]
    g = m @ gram0 @ m.transpose(1, 2)
    return torch.linalg.eigvalsh(g)[:, -1].clamp_min(0).sqrt()


def preactivation_ascent(model: nn.Module, input_shape: tuple[int, ...], *, starts: int = STARTS,
                         steps: int = STEPS, lr: float = 0.1, seed: int = 0,
                         ) -> tuple[Tensor, Tensor] | None:
    """Attained sigma_max(J_f(x)) after Adam ascent on z_1 = W_0 x + b_0; (values, inputs).

    ``starts`` starting points: z_1 = 0, then Gaussian z_1 with the standard deviations of
    ``START_SCALES`` in turn (a generator seeded with ``seed``); ``steps`` Adam steps of
    learning rate ``lr`` on -sum_i sigma_max(J(z_1^i)). Returns the float64 Jacobian norms of
    the model at the inputs x(z_1) (shape (starts,)) and those inputs (starts, *input_shape);
    None when the model is not an MLP, has no nonlinear activation, or W_0 does not reach
    every z_1 (``reachable``). Linear algebra on one thread (``core.utils.one_thread``).
    """
    if not isinstance(starts, int) or starts < 1:
        raise ValueError(f"starts must be an int >= 1, got {starts!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    chain = mlp_chain(model, input_shape)
    if chain is None or not reachable(chain):
        return None
    with one_thread():
        g = torch.Generator().manual_seed(seed)
        n1 = chain.weights[0].shape[0]
        scales = torch.tensor([0.0] + [START_SCALES[i % len(START_SCALES)]
                                       for i in range(starts - 1)], dtype=torch.float64)
        z = (torch.randn(starts, n1, generator=g, dtype=torch.float64) * scales[:, None])
        z.requires_grad_(True)
        gram0 = chain.weights[0] @ chain.weights[0].T
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            (grad,) = torch.autograd.grad(-_sigma(chain, z, gram0).sum(), z)
            z.grad = grad
            opt.step()
        # the minimum-norm input with W_0 x + b_0 = z_1 (W_0 has full row rank)
        x = torch.linalg.pinv(chain.weights[0]) @ (z.detach() - chain.biases[0]).T
        x = x.T.reshape(starts, *input_shape)
        model64 = float64_copy(model)
        values = jacobian_norms(model64, x, method="dense")
    return values, x

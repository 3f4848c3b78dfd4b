"""CLIP: Cheap Lipschitz training (Bungert et al., SSVM 2021).

Loss + λ·Lip_X(f)^p, where Lip_X is estimated on a set of input pairs (u_k, v_k):

    q_k = ‖f(u_k) − f(v_k)‖₂ / ‖u_k − v_k‖₂,   Lip_X = max_k q_k   (or the mean),

and the pairs are moved by gradient ascent on q_k before each descent step on θ.
Each pair has its own step size τ_k: a step that raises q_k is accepted and τ_k ×= 1.3;
one that does not is rejected (the pair is kept) and τ_k ÷= 1.3.

All tensors carry the model axis K first: u, v are (K, P, *in), q and τ are (K, P).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .regularizers import Method, Run, Step
from .schedules import Warmup

__all__ = [
    "CLIP", "PairState", "accept", "ascend", "init_pairs", "propose", "quotients", "quotients_from",
]

Tensor = torch.Tensor
_TINY = 1e-12


def _expand(t: Tensor, like: Tensor) -> Tensor:
    return t.view(*t.shape, *([1] * (like.dim() - t.dim())))


def quotients(forward: Callable[[Tensor], Tensor], u: Tensor, v: Tensor) -> Tensor:
    """q = ‖f(u) − f(v)‖ / ‖u − v‖ per pair; u, v: (K, P, *in) → (K, P). One forward."""
    return quotients_from(forward(torch.cat([u, v], dim=1)), u, v)


def quotients_from(out: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """The quotients from the outputs ``out = f(cat[u, v])`` (K, 2P, *out)."""
    p = u.shape[1]
    num = (out[:, :p] - out[:, p:]).flatten(2).norm(dim=2)
    den = (u - v).flatten(2).norm(dim=2).clamp_min(_TINY)
    return num / den


def _value_and_grad(forward, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q and ∇_u q, ∇_v q per pair: one forward and one backward (inputs only, not θ)."""
    u = u.detach().requires_grad_(True)
    v = v.detach().requires_grad_(True)
    with torch.enable_grad():
        q = quotients(forward, u, v)
        gu, gv = torch.autograd.grad(q.sum(), (u, v))
    return q.detach(), gu, gv


@dataclass
class PairState:
    """The pair set of a run: pairs (K, P, *in), step sizes and quotients (K, P), and the
    gradients ∇_u q, ∇_v q that give the next proposal."""

    u: Tensor
    v: Tensor
    tau: Tensor
    q: Tensor | None = None
    gu: Tensor | None = None
    gv: Tensor | None = None


def propose(pairs: PairState, data_range: tuple[float, float] | None) -> tuple[Tensor, Tensor]:
    """The proposal u' = Π(u + τ ∇_u q), v' = Π(v + τ ∇_v q); Π clamps to the data range."""
    t = _expand(pairs.tau, pairs.u)
    u_new, v_new = pairs.u + t * pairs.gu, pairs.v + t * pairs.gv
    if data_range is not None:
        u_new, v_new = u_new.clamp(*data_range), v_new.clamp(*data_range)
    return u_new, v_new


def accept(
    pairs: PairState, u_new: Tensor, v_new: Tensor, q_new: Tensor, gu_new: Tensor,
    gv_new: Tensor, factor: float,
) -> PairState:
    """Keep the proposal where it raised q (τ ×= factor), else the old pair (τ ÷= factor)."""
    ok = q_new > pairs.q
    a = _expand(ok, pairs.u)
    return PairState(
        u=torch.where(a, u_new, pairs.u), v=torch.where(a, v_new, pairs.v),
        tau=torch.where(ok, pairs.tau * factor, pairs.tau / factor),
        q=torch.where(ok, q_new, pairs.q),
        gu=torch.where(a, gu_new, pairs.gu), gv=torch.where(a, gv_new, pairs.gv),
    )


def ascend(
    forward: Callable[[Tensor], Tensor],
    pairs: PairState,
    steps: int,
    factor: float = 1.3,
    data_range: tuple[float, float] | None = None,
) -> PairState:
    """``steps`` ascent steps on the quotients with per-pair adaptive step sizes.

    u ← Π(u + τ ∇_u q), v ← Π(v + τ ∇_v q) (Π: clamp to the data range); accepted where
    q rises (τ ×= factor), rejected otherwise (τ ÷= factor). The forward that tests a
    step also gives the next step's gradient, so a step costs one forward and one
    backward over the pairs, plus one at the start to evaluate the pairs under the
    current θ (with ``steps=0``, only that evaluation).
    """
    q, gu, gv = _value_and_grad(forward, pairs.u, pairs.v)
    pairs = PairState(pairs.u.detach(), pairs.v.detach(), pairs.tau, q, gu, gv)
    for _ in range(steps):
        u_new, v_new = propose(pairs, data_range)
        q_new, gu_new, gv_new = _value_and_grad(forward, u_new, v_new)
        pairs = accept(pairs, u_new, v_new, q_new, gu_new, gv_new, factor)
    return pairs


def init_pairs(
    run: Run,
    n_pairs: int,
    init: str,
    noise: float,
    noise_dist: str,
    step_size: float,
    data_range: tuple[float, float] | None,
) -> PairState:
    """Draw the pair set from the training inputs, per copy.

    ``init="noise"``: (x, x + noise·δ) with δ ~ N(0, 1) ("normal") or U[0, 1) ("uniform");
    ``init="points"``: pairs of distinct training points.
    """
    x = run.x_train
    n = x.shape[0]
    i = run.draw(lambda g: torch.randint(n, (n_pairs,), generator=g))
    u = x[i]
    if init == "noise":
        shape, dt = u.shape[1:], x.dtype
        if noise_dist == "normal":
            delta = run.draw(lambda g: torch.randn(shape, generator=g, dtype=dt))
        else:
            delta = run.draw(lambda g: torch.rand(shape, generator=g, dtype=dt))
        v = u + noise * delta
    else:
        j = (i + run.draw(lambda g: torch.randint(1, n, (n_pairs,), generator=g))) % n
        v = x[j]
    if data_range is not None:
        u, v = u.clamp(*data_range), v.clamp(*data_range)
    tau = torch.full(i.shape, float(step_size), dtype=x.dtype, device=x.device)
    return PairState(u=u, v=v, tau=tau)


@dataclass
class CLIP(Method):
    """CLIP regularizer: λ·Lip_X(f)^p on a set of adversarially moved input pairs.

    Args:
        lam: the weight λ >= 0.
        pairs: number of pairs P.
        init: "noise" (x, x + noise·δ around training points) or "points" (two
            distinct training points).
        noise: scale of δ for ``init="noise"``.
        noise_dist: "normal" (δ ~ N(0, 1)) or "uniform" (δ ~ U[0, 1), the authors').
        ascent_steps: ascent steps on the pairs per training step.
        step_size: initial per-pair step size τ.
        factor: τ is multiplied by it after an accepted step, divided after a rejected one.
        reduction: "max" or "mean" over the pairs' quotients.
        power: p, 1 (Lip) or 2 (Lip², the authors' code).
        refresh: redraw the pairs every this many training steps (None: never).
        data_range: (low, high) to clamp the pairs to, e.g. (0, 1) for images; None: no clamp.
        schedule: the λ schedule (Constant, Warmup, Discrepancy).
    """

    lam: float = 0.1
    pairs: int = 16
    init: str = "noise"
    noise: float = 0.1
    noise_dist: str = "normal"
    ascent_steps: int = 1
    step_size: float = 1.0
    factor: float = 1.3
    reduction: str = "max"
    power: int = 1
    refresh: int | None = 1000
    data_range: tuple[float, float] | None = None

    def __post_init__(self):
        super().__post_init__()
        self._check_int("pairs", 1)
        self._check_int("ascent_steps", 0)
        if self.refresh is not None:
            self._check_int("refresh", 1)
        self._check_choice("init", ("noise", "points"))
        self._check_choice("noise_dist", ("normal", "uniform"))
        self._check_choice("reduction", ("max", "mean"))
        if self.power not in (1, 2) or isinstance(self.power, bool):
            raise ValueError(f"CLIP: power must be 1 or 2, got {self.power!r}")
        if self.init == "noise" and not self.noise > 0:
            raise ValueError(f"CLIP: noise must be > 0 with init='noise', got {self.noise!r}")
        if not self.step_size > 0 or not self.factor > 1:
            raise ValueError(
                f"CLIP: step_size must be > 0 and factor > 1, got {self.step_size!r}, "
                f"{self.factor!r}"
            )
        if self.data_range is not None:
            lo, hi = (float(v) for v in self.data_range)
            if not lo < hi:
                raise ValueError(f"CLIP: data_range must be (low, high), got {self.data_range!r}")
            self.data_range = (lo, hi)

    def _check_int(self, name: str, low: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"CLIP: {name} must be an int >= {low}, got {value!r}")

    def _check_choice(self, name: str, accepted: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in accepted:
            raise ValueError(f"CLIP: {name} must be one of {accepted}, got {value!r}")

    @classmethod
    def authors(cls, **overrides) -> CLIP:
        """The settings of the authors' public code (DESIGN §2), for comparisons.

        500 pairs (x, x + 0.1·U[0, 1)), one ascent step with initial τ = 10, reduction max,
        power 2, pairs redrawn every 2000 steps, λ = 0.1 after 5 warm-up epochs, pairs
        clamped to [0, 1]. Use it with SGD lr 0.1 momentum 0.9, batch 128, on the MLP
        784-200-80-10 with sigmoid (``last_activation=True`` for their published setting).
        """
        settings = dict(
            lam=0.1,
            pairs=500,
            init="noise",
            noise=0.1,
            noise_dist="uniform",
            ascent_steps=1,
            step_size=10.0,
            reduction="max",
            power=2,
            refresh=2000,
            data_range=(0.0, 1.0),
            schedule=Warmup(5),
        )
        settings.update(overrides)
        return cls(**settings)

    # hooks ---------------------------------------------------------------------
    def _draw(self, run: Run) -> PairState:
        return init_pairs(
            run, self.pairs, self.init, self.noise, self.noise_dist, self.step_size,
            self.data_range,
        )

    def start(self, run):
        if self.init == "points" and run.x_train.shape[0] < 2:
            raise ValueError("CLIP: init='points' needs at least 2 training points")
        return self._draw(run)

    def before_step(self, run, lam):
        """Ascent on the pairs with θ fixed (redrawn every ``refresh`` steps)."""
        state: PairState = run.state
        if self.refresh is not None and run.step > 0 and run.step % self.refresh == 0:
            state = self._draw(run)
        run.state = ascend(run.forward, state, self.ascent_steps, self.factor, self.data_range)

    def extra_inputs(self, run):
        """The pairs ride along in the batch's forward pass (one forward for both)."""
        return torch.cat([run.state.u, run.state.v], dim=1)

    def penalty(self, run, step: Step):
        """R = Lip_X^p, Lip_X = max (or mean) over the pairs of the quotient."""
        pairs: PairState = run.state
        q = quotients_from(step.extra_out, pairs.u, pairs.v)
        lip = q.amax(dim=1) if self.reduction == "max" else q.mean(dim=1)
        return lip**self.power, {"lip": q.detach().amax(dim=1)}

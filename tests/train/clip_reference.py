"""A frozen copy of CLIP's training step as it was before the speed-up (clipkit 0.1.0).

Every training step: evaluate all pairs at θ (forward + backward over 2P inputs), then
per ascent step a forward + backward over the proposals (the last one's gradient is
never used), then the penalty's forward over batch + all 2P pair inputs and a backward
through all of them. ``ck.CLIP`` must train to the same weights (tests/test_clip.py);
this file is that oracle, so it stays as it was: do not optimise it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import clipkit as ck
from clipkit.core.pairs import quotients, quotients_from


@dataclass
class PairState:
    """The pair state of 0.1.0 (separate gradients for u and v), kept here so that the
    oracle does not change with clipkit's own ``PairState``."""

    u: Tensor
    v: Tensor
    tau: Tensor
    q: Tensor | None = None
    gu: Tensor | None = None
    gv: Tensor | None = None


def _value_and_grad(forward, u, v):
    u = u.detach().requires_grad_(True)
    v = v.detach().requires_grad_(True)
    with torch.enable_grad():
        q = quotients(forward, u, v)
        gu, gv = torch.autograd.grad(q.sum(), (u, v))
    return q.detach(), gu, gv


def _expand(t, like):
    return t.view(*t.shape, *([1] * (like.dim() - t.dim())))


def propose(pairs: PairState, data_range):
    t = _expand(pairs.tau, pairs.u)
    u_new, v_new = pairs.u + t * pairs.gu, pairs.v + t * pairs.gv
    if data_range is not None:
        u_new, v_new = u_new.clamp(*data_range), v_new.clamp(*data_range)
    return u_new, v_new


def accept(pairs: PairState, u_new, v_new, q_new, gu_new, gv_new, factor):
    ok = q_new > pairs.q * (1 + torch.finfo(q_new.dtype).eps ** 0.5)
    a = _expand(ok, pairs.u)
    return PairState(
        u=torch.where(a, u_new, pairs.u), v=torch.where(a, v_new, pairs.v),
        tau=torch.where(ok, pairs.tau * factor, pairs.tau / factor),
        q=torch.where(ok, q_new, pairs.q),
        gu=torch.where(a, gu_new, pairs.gu), gv=torch.where(a, gv_new, pairs.gv),
    )


def ascend_reference(forward, pairs: PairState, steps: int, factor: float, data_range):
    q, gu, gv = _value_and_grad(forward, pairs.u, pairs.v)
    pairs = PairState(pairs.u.detach(), pairs.v.detach(), pairs.tau, q, gu, gv)
    for _ in range(steps):
        u_new, v_new = propose(pairs, data_range)
        q_new, gu_new, gv_new = _value_and_grad(forward, u_new, v_new)
        pairs = accept(pairs, u_new, v_new, q_new, gu_new, gv_new, factor)
    return pairs


@dataclass
class ReferenceCLIP(ck.CLIP):
    """``ck.CLIP`` with the step of clipkit 0.1.0 (the options that existed then)."""

    def __post_init__(self):
        super().__post_init__()
        new = {"ascent_on": "quotient", "keep_step_sizes": False, "skip_above": None,
               "accept_rtol": None}
        for name, default in new.items():
            if getattr(self, name) != default:
                raise ValueError(f"ReferenceCLIP has no option {name}={getattr(self, name)!r}")

    def before_step(self, run, lam):
        state = run.state
        if self.refresh is not None and run.step > 0 and run.step % self.refresh == 0:
            state = self._draw(run)
        run.state = ascend_reference(run.forward, state, self.ascent_steps, self.factor,
                                     self.data_range)

    def extra_inputs(self, run):
        return torch.cat([run.state.u, run.state.v], dim=1)

    def penalty(self, run, step):
        pairs = run.state
        q = quotients_from(step.extra_out, pairs.u, pairs.v)
        lip = q.amax(dim=1) if self.reduction == "max" else q.mean(dim=1)
        return lip**self.power, {"lip": q.detach().amax(dim=1)}

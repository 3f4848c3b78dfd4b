"""CLIP: Cheap Lipschitz training (Bungert et al., SSVM 2021).

Loss + λ·Lip_X(f)^p, where Lip_X is estimated on a set of input pairs (u_k, v_k):

    q_k = ‖f(u_k) − f(v_k)‖₂ / ‖u_k − v_k‖₂,   Lip_X = max_k q_k   (or the mean),

and the pairs are moved by gradient ascent on q_k (or on q_k^p) before each descent step
on θ. Each pair has its own step size τ_k: a step that raises q_k is accepted and
τ_k ×= 1.3; one that does not is rejected (the pair is kept) and τ_k ÷= 1.3.

Cost of one training step with P pairs, s ascent steps and reduction "max": a forward and
an input-gradient backward over the 2P pair inputs at the current θ; per ascent step a
forward over the 2P proposals (and a backward, except after the last step, whose
gradient the next θ would make stale; where the model's first layer is a narrowing
``nn.Linear``, the pairs are unclamped and there are enough pairs, that forward starts after
the first layer, whose output at the proposals comes from the gradient,
``clipkit.core.affine_first``); then the descent step's forward and backward over
the batch and the winning pair only, since the max's θ-gradient flows through that pair
alone. With ``reduction="mean"`` the descent step runs over the batch and all pairs.
With λ = 0 for every copy the descent step is standard training's.

All tensors carry the model axis K first: u, v are (K, P, *in), q and τ are (K, P).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from clipkit.core.pairs import AscentRule, PairState, ascend, joint, quotients_from
from clipkit.core.utils import check_choice, check_int, check_number, check_positive, check_range
from clipkit.train.protocol import Method, Run, Step
from clipkit.train.schedules import Warmup

__all__ = ["CLIP", "init_pairs"]

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


#: ``CLIP.ascent_precision``: the dtype of the ascent's products with the first layer
#: (None: the model's own)
_PRECISIONS: dict[str, torch.dtype | None] = {"full": None, "bfloat16": torch.bfloat16}


def _winner(q: Tensor) -> Tensor:
    """Per copy, the first pair whose quotient is within √eps (relative) of the largest.

    Pairs inside one linear piece of a ReLU network have equal quotients up to rounding
    (often, with low-dimensional inputs); an argmax would choose among them by summation
    order, and runs that differ only in that (vmap or not) would drift apart.
    """
    top = q.amax(dim=1, keepdim=True)
    near = q >= top * (1 - torch.finfo(q.dtype).eps ** 0.5)
    return near.to(torch.uint8).argmax(dim=1)


def _winning_pair(pairs: PairState) -> tuple[Tensor, Tensor]:
    """(index (K,), cat[u_w, v_w] (K, 2, *in)): per copy, the pair ``_winner`` picks,
    gathered from cat[u, v] in one indexing."""
    w = _winner(pairs.q)
    uv = joint(pairs).detach()
    rows = torch.stack([w, w + pairs.u.shape[1]], dim=1)  # (K, 2): u_w's and v_w's rows
    return w, uv[torch.arange(uv.shape[0], device=uv.device)[:, None], rows]


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
        ascent_steps: ascent steps on the pairs per training step. Each costs a forward and
            a backward over the 2P pair inputs. The default 2 lets the pairs see the slope
            the network has (benchmarks/bench_estimate.py, 10 seeds: CLIP's estimate ÷ an
            attained lower bound 0.85, every seed ≥ 0.80; with 1 step 0.73, down to 0.59,
            and the trained networks steeper at the same λ), for about 1.35 times the cost
            of a step with 1; test and PGD accuracy after 40 epochs were the same within
            the seeds' spread (benchmarks/bench_approx.py, 6 seeds; docs/method.md).
        step_size: initial per-pair step size τ.
        factor: τ is multiplied by it after an accepted step, divided after a rejected one.
        reduction: "max" or "mean" over the pairs' quotients; the penalty is
            (max_k q_k)^p or (mean_k q_k)^p.
        power: p, 1 (Lip) or 2 (Lip², the authors' code).
        refresh: redraw the pairs every this many training steps (None: never).
        data_range: (low, high) to clamp the pairs to, e.g. (0, 1) for images; None: no clamp.
        ascent_on: "quotient" (the ascent climbs q_k) or "penalty" (it climbs q_k^p: with
            p = 2 the step is τ·2q_k·∇q_k, the authors' code). Accepting a step compares
            the quotients either way.
        keep_step_sizes: on a redraw the new pairs keep the step sizes τ of the pairs
            they replace (the authors' code); False: they start again at ``step_size``.
            Carried-over τ need the authors' acceptance rule too (``accept_rtol=0``): with
            the √eps rule, small rises are rejected, τ shrinks until the pairs stop moving,
            and the redrawn pairs inherit the tiny τ. Measured on their published setting
            (Fashion-MNIST, 40 epochs, seed 0): carry-over with √eps gave 49 % test
            accuracy and 12 % under their PGD, like plain training (56 %, 11 %); carry-over
            with ``accept_rtol=0`` 70 % and 55 %; no carry-over with √eps 75 % and 53 %.
        skip_above: skip the penalty (λ·0) on a step where Lip_X^p exceeds this (the
            authors' reg_max = 5000 with p = 2); None: never. The history's ``skipped``
            is the fraction of the epoch's steps skipped.
        accept_rtol: an ascent step is accepted where the quotient rose by more than this,
            relative; None: √eps of the dtype (see ``clipkit.core.pairs.AscentRule``), which
            keeps ``fit_path`` equal to separate ``fit`` runs on ReLU networks (whose pairs
            can have equal quotients up to rounding). 0: any rise (the authors').
        ascent_precision: "full" (the model's dtype: the method as published) or
            "bfloat16", an approximation, off by default: the ascent's products with the
            first layer's weight (the largest part of its work with many pairs) in
            bfloat16, a pair's second input as A(u) − W·(u − v) so that the quotient keeps
            its precision (``clipkit.core.affine_first``); the rest of the model, the
            pairs themselves and the descent step (the winner's quotient, the penalty)
            stay in the model's dtype. Faster only where the hardware multiplies bfloat16
            natively (GPUs, CPUs with AVX512-BF16 or AMX); elsewhere slower. Needs a model
            whose first layer is a narrowing ``nn.Linear`` (after ``nn.Flatten``). Measured
            (docs/method.md): with ``CLIP.authors()`` on a CPU with AVX512-BF16 an epoch cost
            5.7 standard epochs against 7.8; on the corrected model (40 epochs, 3 seeds) test
            and PGD accuracy were the same within the seeds' spread; on the published setting
            (sigmoid on the logits) more seeds died when λ switched on (12 of 20 at chance
            after 9 epochs, against 7 and 9 of 20 with the exact ascent rounded two ways: the
            exact algorithm loses seeds there too).
        schedule: the λ schedule (Constant, Warmup, Discrepancy).
    """

    lam: float = 0.1
    pairs: int = 64
    init: str = "noise"
    noise: float = 0.1
    noise_dist: str = "normal"
    ascent_steps: int = 2
    step_size: float = 1.0
    factor: float = 1.3
    reduction: str = "max"
    power: int = 1
    refresh: int | None = 1000
    data_range: tuple[float, float] | None = None
    ascent_on: str = "quotient"
    keep_step_sizes: bool = False
    skip_above: float | None = None
    accept_rtol: float | None = None
    ascent_precision: str = "full"

    eager_model = True  # ck.fit trains a compiled model's own module (setup.eager_module)

    def __post_init__(self):
        super().__post_init__()
        check_int(self.pairs, "CLIP: pairs", 1)
        check_int(self.ascent_steps, "CLIP: ascent_steps", 0)
        if self.refresh is not None:
            check_int(self.refresh, "CLIP: refresh", 1)
        check_choice(self.init, "CLIP: init", ("noise", "points"))
        check_choice(self.noise_dist, "CLIP: noise_dist", ("normal", "uniform"))
        check_choice(self.reduction, "CLIP: reduction", ("max", "mean"))
        check_choice(self.ascent_on, "CLIP: ascent_on", ("quotient", "penalty"))
        check_choice(self.ascent_precision, "CLIP: ascent_precision", tuple(_PRECISIONS))
        if self.accept_rtol is not None and not (
                isinstance(self.accept_rtol, (int, float)) and self.accept_rtol >= 0):
            raise ValueError(f"CLIP: accept_rtol must be a number >= 0 or None, got "
                             f"{self.accept_rtol!r}")
        if self.power not in (1, 2) or isinstance(self.power, bool):
            raise ValueError(f"CLIP: power must be 1 or 2, got {self.power!r}")
        if not isinstance(self.keep_step_sizes, bool):
            raise ValueError(f"CLIP: keep_step_sizes must be True or False, got "
                             f"{self.keep_step_sizes!r}")
        if self.skip_above is not None:
            if isinstance(self.skip_above, bool) or not isinstance(self.skip_above, (int, float)) \
                    or not self.skip_above > 0:
                raise ValueError(f"CLIP: skip_above must be a number > 0 or None, got "
                                 f"{self.skip_above!r}")
            self.skip_above = float(self.skip_above)
        self.noise = check_number(self.noise, "CLIP: noise")
        if self.init == "noise" and not self.noise > 0:
            raise ValueError(f"CLIP: noise must be > 0 with init='noise', got {self.noise!r}")
        self.step_size = check_positive(self.step_size, "CLIP: step_size")
        self.factor = check_number(self.factor, "CLIP: factor")
        if not self.factor > 1:
            raise ValueError(f"CLIP: factor must be > 1, got {self.factor!r}")
        if self.data_range is not None:
            self.data_range = check_range(self.data_range, "CLIP: data_range")

    @classmethod
    def authors(cls, **overrides) -> CLIP:
        """The settings of the authors' public code (TimRoith/CLIP, ``clip_example``).

        500 pairs (x, x + 0.1·U[0, 1)), not clamped to the image range; one ascent step
        on the squared quotient q² (step τ·2q·∇q), initial τ = 10, ×/÷ 1.3; the step sizes
        carried over when the pairs are redrawn every 2000 steps; penalty λ·(max_k q_k)²
        through the winning pair only, skipped on a step where it exceeds 5000; λ = 0.1
        from the 7th epoch (epochs 0-5 at λ = 0: their scheduler's warm-up of 5 plus the
        epoch it is built for; their discrepancy increment is 0, so λ stays 0.1 — with an
        increment, their rule is ``Discrepancy(goal_acc, delta, every=2, warmup=6)``).
        Use it with SGD lr 0.1 momentum 0.9, batch 128, on the MLP 784-200-80-10 with
        sigmoid (``last_activation=True`` for their published setting).

        Deviations from their code that remain:

        * the pairs are drawn from the training data (theirs: from a held-out 10 % split,
          their validation set), with replacement (theirs: one shuffled batch of 1000);
        * their first ascent of a run compares the proposals with 0 (every proposal with
          q > 0 is accepted, τ ×= 1.3); here it compares with the pairs' quotients, like
          every later step (theirs too, after a redraw);
        * clipkit trains on all the data it is given: hold out 10 % yourself for their
          54,000-image training split.
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
            data_range=None,
            ascent_on="penalty",
            keep_step_sizes=True,
            skip_above=5000.0,
            accept_rtol=0.0,
            schedule=Warmup(6),
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
        if self.ascent_precision != "full" and run.affine_first is None:
            raise ValueError(
                f"CLIP: ascent_precision={self.ascent_precision!r} needs a model whose first "
                f"layer is a narrowing nn.Linear (after nn.Flatten only) in an nn.Sequential, "
                f"such as ck.models.mlp; this model has none: use ascent_precision='full'")
        return self._draw(run)

    def rule(self) -> AscentRule:
        """How the ascent moves the pairs (``clipkit.core.pairs``): CLIP's gradient rule."""
        return AscentRule(factor=self.factor, step="gradient",
                          power=self.power if self.ascent_on == "penalty" else 1,
                          clamp=self.data_range, rtol=self.accept_rtol)

    def before_step(self, run, lam):
        """Ascent on the pairs with θ fixed (redrawn every ``refresh`` steps)."""
        state: PairState = run.state
        if self.refresh is not None and run.step > 0 and run.step % self.refresh == 0:
            fresh = self._draw(run)
            if self.keep_step_sizes:
                fresh.tau = state.tau
            state = fresh
        run.state = ascend(run.forward, state, self.ascent_steps, self.rule(),
                           run.affine_first, _PRECISIONS[self.ascent_precision])

    def extra_inputs(self, run):
        """The pairs the penalty differentiates through, in the batch's forward pass.

        "max": the winning pair only (the largest quotient at the current θ, known from the
        ascent; see ``_winner`` for near ties); "mean": every pair. None where λ = 0 for
        every copy (nothing to differentiate).
        """
        if not run.lam_nonzero:
            return None
        pairs: PairState = run.state
        if self.reduction == "mean":
            return joint(pairs)
        pairs.winner = _winning_pair(pairs)
        return pairs.winner[1]

    def penalty(self, run, step: Step):
        """R = Lip_X^p, Lip_X = max (or mean) over the pairs of the quotient at the current θ.

        The history's ``lip`` is the largest quotient at the current θ. Where λ = 0 for
        every copy nothing is differentiated: R is the value alone.
        """
        pairs: PairState = run.state
        if step.extra_out is None:  # λ = 0: the ascent's values, for the history
            if self.ascent_precision != "full":  # measured again in the model's dtype, as
                return self._finish(*self._measured(run, pairs))  # at λ ≠ 0 (below)
            q = pairs.q
            lip = q.amax(dim=1) if self.reduction == "max" else q.mean(dim=1)
            return self._finish(lip, q.amax(dim=1))
        if self.reduction == "mean":
            q = quotients_from(step.extra_out, pairs.u, pairs.v)
            lip, top = q.mean(dim=1), q.detach().amax(dim=1)
        else:
            _, uv_w = pairs.winner
            u_w, v_w = uv_w.chunk(2, dim=1)
            lip = quotients_from(step.extra_out, u_w, v_w)[:, 0]
            top = lip.detach()
        return self._finish(lip, top)

    def _measured(self, run, pairs: PairState) -> tuple[Tensor, Tensor]:
        """(Lip_X, the largest quotient) as the descent step measures them at λ ≠ 0, in the
        model's dtype, no graph: "max" the winner's quotient (both), "mean" every pair's."""
        with torch.no_grad():
            if self.reduction == "mean":
                q = quotients_from(run.forward(joint(pairs)), pairs.u, pairs.v)
                return q.mean(dim=1), q.amax(dim=1)
            _, uv_w = _winning_pair(pairs)
            top = quotients_from(run.forward(uv_w), *uv_w.chunk(2, dim=1))[:, 0]
            return top, top

    def _finish(self, lip: Tensor, top: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """λ·(lip^p) with ``skip_above`` applied, and the history's metrics."""
        reg = lip if self.power == 1 else lip**self.power  # lip**1: 3 more kernels, same value
        metrics = {"lip": top}
        if self.skip_above is not None:
            skip = reg.detach() > self.skip_above
            reg = torch.where(skip, torch.zeros_like(reg), reg)
            metrics["skipped"] = skip.to(reg.dtype)
        return reg, metrics

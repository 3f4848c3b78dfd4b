"""Robustness evaluation: FGSM, PGD (l2 / linf), the CLIP authors' PGD, Gaussian noise, and
accuracy over a grid of eps.

Every attack has the torchattacks call shape ``attack(model, x, y) -> x_adv``: configure it
once (``PGD(eps=2.0, norm="l2")``), call it on batches. Inputs stay in ``clamp`` (the data
range, default [0, 1]; None for unbounded data). The model is evaluated in eval mode during
the attack and its parameters get no gradients. Random starts and noise come from a
torch.Generator seeded with ``seed`` (one stream per attack object and device).

What is attacked: FGSM and PGD climb the cross-entropy of the logits; where a model ends
in a sigmoid or tanh on them (the authors' published setting), the logits before it
(:func:`logits_part`; ``logits=False``: through it). The authors' PGD climbs the
cross-entropy of the model's output, as their code does. Accuracy is always the whole
model's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import Tensor, nn

from clipkit.core.models import without_final_squash
from clipkit.core.pgd import check_in_range, pgd, uniform_ball
from clipkit.core.utils import (
    broadcast_to,
    check_class_labels,
    check_int,
    check_model_takes,
    device_dtype,
    eval_mode,
    flat_norm,
)

__all__ = ["FGSM", "PGD", "Attack", "AuthorsPGD", "GaussianNoise", "check_in_range",
           "logits_part", "robust_accuracy"]

Loss = Callable[[Tensor, Tensor], Tensor]


def _check_eps(eps: object, name: str = "eps") -> float:
    if isinstance(eps, np.integer | np.floating) or (isinstance(eps, Tensor) and eps.numel() == 1
                                                     and not eps.dtype == torch.bool):
        eps = eps.item()  # numpy and torch scalars, e.g. from np.linspace / torch.linspace
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps) \
            or eps < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _check_clamp(clamp: object) -> None:
    if clamp is None:
        return
    if (not isinstance(clamp, tuple | list) or len(clamp) != 2
            or not all(isinstance(c, int | float) for c in clamp) or not clamp[0] < clamp[1]):
        raise ValueError(f"clamp must be None or (low, high) with low < high, got {clamp!r}")


@dataclass
class Attack:
    """Base class: ``attack(model, x, y) -> x_adv``, x_adv in the eps-ball and the data range.

    Attributes:
        eps: the radius (or the noise standard deviation).
        clamp: data range (low, high), or None for unbounded inputs.
        seed: seed of the attack's torch.Generator (random starts, noise).
    """

    eps: float
    clamp: tuple[float, float] | None = (0.0, 1.0)
    seed: int = 0
    _generators: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.eps = _check_eps(self.eps)
        _check_clamp(self.clamp)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")

    def with_eps(self, eps: float) -> Attack:
        """A copy with another eps and a freshly seeded generator."""
        return replace(self, eps=eps)

    def config(self) -> dict:
        """The attack's settings (JSON-serialisable)."""
        d: dict = {"attack": type(self).__name__}
        for f in fields(self):
            if f.name.startswith("_"):
                continue
            v = getattr(self, f.name)
            if callable(v):
                v = getattr(v, "__name__", type(v).__name__)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    def _gen(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def _clamp(self, x: Tensor) -> Tensor:
        return x if self.clamp is None else x.clamp(*self.clamp)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not isinstance(y, Tensor) or len(x) != len(y):
            raise ValueError("attack(model, x, y): x and y must be tensors of the same length")
        check_in_range(x, self.clamp, "x", f"{type(self).__name__}(clamp=...)")
        _, dtype = device_dtype(model)
        if x.is_floating_point() and dtype.is_floating_point and x.dtype != dtype:
            x = x.to(dtype)  # float32 images on a float64 model, as robust_accuracy does
        with eval_mode(model):
            return self._perturb(model, x.detach(), y.detach()).detach()

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError


def logits_part(model: nn.Module) -> nn.Module:
    """The part of ``model`` whose output a gradient attack differentiates by default:
    ``model[:-1]`` where ``model`` is an ``nn.Sequential`` ending in a sigmoid or tanh (the
    authors' published setting squeezes the logits z into σ(z) ∈ (0, 1)), else ``model``.

    argmax σ(z) = argmax z, so the attack aims at the same decision; but the cross-entropy
    of the squeezed outputs points elsewhere than that of z (on a published-setting net,
    PGD-ℓ2 at ε = 2 left 15.8 % of the test images robust through the sigmoid and 10.0 %
    through z). The accuracy is always that of the whole model at the attacked input.

    A model that knows its own logits part says so with a ``logits_part()`` method (a
    ``fit_path`` copy, ``clipkit.train.path.CopyView``: the learning curves attack those);
    a ``torch.compile``'d model is looked into (its part runs uncompiled).
    """
    inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule wraps it
    if isinstance(inner, nn.Module):
        part = logits_part(inner)
        return model if part is inner else part
    own = getattr(model, "logits_part", None)
    if callable(own):
        return own()
    part = without_final_squash(model)
    return model if part is None else part


def _loss_grad(model: nn.Module, loss: Loss | None, x: Tensor, y: Tensor,
               logits: bool = False) -> Tensor:
    """d/dx of sum_i loss(model(x_i), y_i) (cross-entropy by default); no parameter gradients.
    ``logits``: of the cross-entropy of :func:`logits_part`'s output instead (default loss)."""
    if logits and loss is None:
        model = logits_part(model)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        value = loss(out, y) if loss is not None else F.cross_entropy(out, y, reduction="sum")
        (g,) = torch.autograd.grad(value, x)
    return g


@dataclass
class FGSM(Attack):
    """Fast gradient sign method (linf): x_adv = clamp(x + eps sign(grad_x loss)).

    ``loss`` (default: cross-entropy) of the model's output; with the default loss and
    ``logits=True``, a final sigmoid or tanh is left out of the gradient
    (:func:`logits_part`).
    """

    loss: Loss | None = None
    logits: bool = True

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self.eps == 0:
            return x
        g = _loss_grad(model, self.loss, x, y, self.logits)
        return self._clamp(x + self.eps * g.sign())


@dataclass
class PGD(Attack):
    """Projected gradient ascent of the loss in the l2 or linf ball of radius eps.

    Random start uniform in the ball; ``steps`` steps x <- P(x + a d), d = g/||g|| (l2) or
    sign(g) (linf), a = ``step_size`` (default 2.5 eps / steps, as in Madry et al.); P projects
    onto the ball around the clean x, then clamps to the data range (which keeps it in the ball:
    the clean x is in the range). Returns the last iterate. ``restarts``: that many runs
    from independent random starts; each point keeps the first run's iterate that the model
    misclassifies (else the last run's), so more restarts never fool fewer points (the
    first run is the one-restart attack). ``loss`` and ``logits`` as in :class:`FGSM`.
    """

    norm: str = "l2"
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    loss: Loss | None = None
    logits: bool = True
    restarts: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm not in ("l2", "linf"):
            raise ValueError(f"norm must be 'l2' or 'linf', got {self.norm!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        check_int(self.restarts, "restarts", low=1)
        if self.restarts > 1 and not self.random_start:
            raise ValueError(f"restarts={self.restarts} needs random_start=True: without a "
                             f"random start every run is the same")
        if self.step_size is not None:
            _check_eps(self.step_size, "step_size")

    def _start(self, x: Tensor) -> Tensor:
        """δ0 uniform in the ball: in the cube [−ε, ε]^n (ℓ∞), or :func:`uniform_ball` (ℓ2)."""
        g = self._gen(x.device)
        if self.norm == "linf":
            return self.eps * (torch.rand(x.shape, generator=g, device=x.device,
                                          dtype=x.dtype) * 2 - 1)
        d = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        r = torch.rand(len(x), generator=g, device=x.device, dtype=x.dtype)
        return uniform_ball(d, r, self.eps)

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self.eps == 0:
            return x
        a = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        best, fooled = x, torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            delta0 = self._start(x) if self.random_start else torch.zeros_like(x)
            xa = pgd(lambda xa: (_loss_grad(model, self.loss, xa, y, self.logits), None), x,
                     delta0, eps=self.eps, steps=self.steps, step_size=a, norm=self.norm,
                     clamp=self.clamp)
            if self.restarts == 1:
                return xa
            with torch.no_grad():
                now = model(xa).argmax(1) != y
            # a point not fooled yet takes this run's iterate; a fooled one keeps its own
            best = torch.where(fooled.view(-1, *([1] * (x.dim() - 1))), best, xa)
            fooled |= now
            if bool(fooled.all()):
                break
        return best


@dataclass
class AuthorsPGD(Attack):
    """The PGD-ℓ2 of the CLIP authors' code, for like-for-like comparisons with their table.

    Start: δ uniform in the cube [−ε, ε]^n, clamped so that x + δ is in the data range,
    rescaled onto the sphere ‖δ‖ = ε. Each of ``steps`` iterations (their test: 100, their
    validation: 7) moves only the points the model still classifies correctly:
    δ ← δ + a·sign(∇_δ loss) (a = ``step_size``, theirs 0.5), clamped so that x + δ is in
    the data range, rescaled onto the sphere ‖δ‖ = ε. Returns clamp(x + δ).

    It differs from :class:`PGD` (ℓ2) in three ways, each making it weaker: sign steps
    rather than normalised gradient steps (in ℓ2 a sign step is not the steepest one), the
    sphere rather than the ball, and no further steps on points already misclassified
    (so the returned point is the first that fooled the model, never a stronger one).
    Its loss is that of the model's output, through a final sigmoid where the model has
    one, as in the authors' code.
    """

    steps: int = 100
    step_size: float = 0.5
    loss: Loss | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        _check_eps(self.step_size, "step_size")

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self.eps == 0:
            return x
        g = self._gen(x.device)
        d = self.eps * (torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) * 2 - 1)
        d = self._clamp(x + d) - x
        d = d * broadcast_to(self.eps / flat_norm(d).clamp_min(1e-30), d)

        def grad_fn(xa: Tensor) -> tuple[Tensor, Tensor]:
            xa = xa.detach().requires_grad_(True)
            with torch.enable_grad():
                out = model(xa)
                value = (self.loss(out, y) if self.loss is not None
                         else F.cross_entropy(out, y, reduction="sum"))
                (grad,) = torch.autograd.grad(value, xa)
            return grad, out.argmax(1) == y

        return pgd(grad_fn, x, d, eps=self.eps, steps=self.steps, step_size=self.step_size,
                   norm="l2", step="sign", project="sphere", clamp=self.clamp)


@dataclass
class GaussianNoise(Attack):
    """x_adv = clamp(x + eps z), z ~ N(0, I): eps is the noise standard deviation.

    The CLIP authors' noise is this at eps = 1.0 (their default ``nl``).
    """

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        z = torch.randn(x.shape, generator=self._gen(x.device), device=x.device, dtype=x.dtype)
        return self._clamp(x + self.eps * z)


def robust_accuracy(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    attack: Attack,
    eps: Sequence[float],
    *,
    batch_size: int = 256,
) -> xr.DataArray:
    """Accuracy under ``attack`` for each eps, as a DataArray over ``eps``.

    A point counts when the model classifies both x and attack(x) correctly (the
    RobustBench/AutoAttack convention: a misclassified point is never 'robust'), so the curve
    never exceeds the clean accuracy (stored in attrs). Each eps starts from a fresh copy of
    ``attack`` (``attack.with_eps``), so every value is reproducible on its own.
    """
    if not isinstance(attack, Attack):
        raise TypeError(f"attack must be a clipkit.attacks.Attack, got {type(attack).__name__}")
    if (not isinstance(data, tuple | list) or len(data) != 2
            or not all(isinstance(t, Tensor) for t in data) or len(data[0]) != len(data[1])):
        raise ValueError("data must be a pair (x, y) of tensors with the same length")
    if isinstance(eps, int | float):
        raise ValueError("eps must be a sequence of numbers, e.g. eps=[0.0, 0.5, 1.0]")
    eps_list = [_check_eps(e) for e in eps]
    if not eps_list:
        raise ValueError("eps must contain at least one value")
    check_int(batch_size, "batch_size", low=1)
    x, y = data
    out = check_model_takes(model, x, "data[0] (x)", place=True)
    y = check_class_labels(y, out.shape[-1], "data[1] (y)")
    check_in_range(x, attack.clamp, "data[0] (x)", "the attack's clamp")
    device, dtype = device_dtype(model)
    x = x.to(dtype=dtype)
    with eval_mode(model):
        clean_ok = []
        with torch.no_grad():
            for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
                clean_ok.append(model(xb.to(device)).argmax(1) == yb.to(device))
        ok = torch.cat(clean_ok)
        acc = []
        for e in eps_list:
            att = attack.with_eps(e)
            hits = 0
            for k, (xb, yb) in enumerate(zip(x.split(batch_size), y.split(batch_size),
                                             strict=True)):
                xb, yb = xb.to(device), yb.to(device)
                xa = att(model, xb, yb)
                with torch.no_grad():
                    right = model(xa).argmax(1) == yb
                hits += int((right & ok[k * batch_size:k * batch_size + len(xb)]).sum())
            acc.append(hits / len(x))
    return xr.DataArray(
        acc, dims=("eps",), coords={"eps": eps_list}, name="robust_accuracy",
        attrs={"attack": type(attack).__name__, "clean_accuracy": float(ok.float().mean()),
               "n": len(x), "config": json.dumps(attack.config())},
    )

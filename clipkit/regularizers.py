"""Training methods: the common interface, and the baselines CLIP is compared with.

Every method works on a *model axis* K first: inputs are (K, B, *in), outputs
(K, B, *out), penalties (K,). ``ck.fit`` trains one model (K = 1); ``ck.fit_path``
trains K copies at once with vmap. Random choices use one torch.Generator per copy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .schedules import Constant, Schedule, check_lam

__all__ = [
    "AdversarialTraining",
    "GradientPenalty",
    "Method",
    "Run",
    "SpectralNorm",
    "Standard",
    "Step",
    "WeightDecay",
    "pgd_batched",
]

Tensor = torch.Tensor


@dataclass
class Run:
    """What a method sees of the whole training run."""

    forward: Callable[[Tensor], Tensor]  # (K, B, *in) -> (K, B, *out)
    params: Callable[[], dict[str, Tensor]]  # name -> (K, *shape), differentiable
    x_train: Tensor  # (N, *in) on the device
    y_train: Tensor
    sample_loss: Callable[[Tensor, Tensor], Tensor]  # (out, y) -> (K, B)
    generators: list[torch.Generator]  # one per copy, for the method's random draws (CPU)
    device: torch.device
    dtype: torch.dtype
    step: int = 0
    state: Any = None
    #: whether any copy's λ is nonzero this epoch (a host flag: no device sync per step)
    lam_nonzero: bool = True

    @property
    def K(self) -> int:
        return len(self.generators)

    def draw(self, fn: Callable[[torch.Generator], Tensor]) -> Tensor:
        """Stack ``fn(generator_k)`` over the copies (drawn on the CPU: same seed, same draw)."""
        return torch.stack([fn(g) for g in self.generators]).to(self.device)


@dataclass
class Step:
    """What a method sees of one training step."""

    x: Tensor  # (K, B, *in), the inputs trained on
    y: Tensor  # (K, B, ...)
    out: Tensor  # (K, B, *out)
    sample_loss: Tensor  # (K, B)
    lam: Tensor  # (K,)
    extra_out: Tensor | None = None  # the model's outputs on ``Method.extra_inputs``


@dataclass
class Method:
    """Base class: a training method with a penalty weight λ and a λ schedule."""

    lam: float = 0.0
    schedule: Schedule = field(default_factory=Constant)

    #: whether the step's inputs must require grad (penalties on input gradients)
    input_grad = False
    #: whether the method can be trained as a vectorised λ-path
    vectorizable = True

    def __post_init__(self):
        self.lam = check_lam(self.lam, f"{type(self).__name__}: lam")
        if not isinstance(self.schedule, Schedule):
            raise TypeError(
                f"{type(self).__name__}: schedule must be a clipkit schedule "
                f"(Constant, Warmup, Discrepancy), got {self.schedule!r}"
            )

    @property
    def name(self) -> str:
        return type(self).__name__

    def config(self) -> dict[str, Any]:
        """The method's settings, JSON-ready."""
        cfg = {"method": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Schedule):
                value = {"schedule": type(value).__name__, **dataclasses.asdict(value)}
            cfg[f.name] = list(value) if isinstance(value, tuple) else value
        return cfg

    def replace(self, **changes) -> Method:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # hooks, in the order the loop calls them ---------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        """Change the model before training (e.g. a parametrization)."""
        return model

    def start(self, run: Run) -> Any:
        """Create the per-run state (kept in ``run.state``)."""
        return None

    def before_step(self, run: Run, lam: Tensor) -> None:
        """Work with θ fixed before the descent step (CLIP's ascent on the pairs)."""

    def inputs(self, run: Run, x: Tensor, y: Tensor) -> Tensor:
        """The inputs to train on (adversarial training replaces them)."""
        return x

    def extra_inputs(self, run: Run) -> Tensor | None:
        """Inputs (K, M, *in) to evaluate in the same forward pass as the batch.

        One forward over the batch and these inputs together costs less than two; their
        outputs reach ``penalty`` as ``step.extra_out``. (A model with batch norm in
        training mode would see them in its batch statistics.)
        """
        return None

    def penalty(self, run: Run, step: Step) -> tuple[Tensor | None, dict[str, Tensor]]:
        """R(θ) per copy (K,), added as λ·R, and per-copy metrics for the history."""
        return None, {}


@dataclass
class Standard(Method):
    """Plain training: no penalty."""

    def __post_init__(self):
        super().__post_init__()
        if self.lam != 0:
            raise ValueError(f"Standard: lam must be 0 (it has no penalty), got {self.lam}")


@dataclass
class WeightDecay(Method):
    """Weight regularization λ‖θ‖² (all parameters, biases included): the paper's baseline.

    As λ → ∞ it drives θ → 0, so the network tends to the zero network's output (0),
    not to the optimal constant.
    """

    lam: float = 1e-4

    def penalty(self, run, step):
        reg = sum(p.flatten(1).pow(2).sum(1) for p in run.params().values())
        return reg, {}


@dataclass
class GradientPenalty(Method):
    """Input-gradient penalty (double backpropagation): λ · mean_b ‖∇_x ℓ(f(x_b), y_b)‖²."""

    lam: float = 0.01
    input_grad = True

    def penalty(self, run, step):
        (grad,) = torch.autograd.grad(step.sample_loss.sum(), step.x, create_graph=True)
        return grad.flatten(2).pow(2).sum(2).mean(1), {}


@dataclass
class SpectralNorm(Method):
    """Spectral normalisation of every Linear and Conv2d weight (torch's parametrization).

    Each weight is divided by its largest singular value (power iteration, one step
    per forward in training mode); no λ.
    """

    n_power_iterations: int = 1
    vectorizable = False

    def __post_init__(self):
        super().__post_init__()
        if self.lam != 0:
            raise ValueError(f"SpectralNorm: lam is not used and must be 0, got {self.lam}")

    def prepare(self, model):
        from torch.nn.utils.parametrizations import spectral_norm

        for module in list(model.modules()):
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                spectral_norm(module, n_power_iterations=self.n_power_iterations)
        return model


def _project(delta: Tensor, eps: float, norm: str) -> Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(2).norm(dim=2).clamp_min(1e-12)
    factor = (eps / flat).clamp(max=1.0)
    return delta * factor.view(*factor.shape, *([1] * (delta.dim() - 2)))


def pgd_batched(
    run: Run,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    step_size: float,
    norm: str,
    data_range: tuple[float, float] | None,
) -> Tensor:
    """PGD on the model axis: maximise the loss in the ε-ball (ℓ∞ or ℓ2) around x.

    Random start in the ball (per-copy generators), ascent along sign(∇) (ℓ∞) or
    ∇/‖∇‖ (ℓ2), projection onto the ball, clamp to the data range.
    """
    shape = x.shape[1:]
    if norm == "linf":
        delta = run.draw(lambda g: torch.rand(shape, generator=g, dtype=x.dtype) * 2 - 1) * eps
    else:
        d = run.draw(lambda g: torch.randn(shape, generator=g, dtype=x.dtype))
        r = run.draw(lambda g: torch.rand(shape[:1], generator=g, dtype=x.dtype))
        d = d / d.flatten(2).norm(dim=2).clamp_min(1e-12).view(*d.shape[:2], *[1] * (d.dim() - 2))
        delta = d * (eps * r.pow(1.0 / math.prod(shape[1:]))).view(
            *r.shape, *[1] * (d.dim() - 2)
        )
    x_adv = x + delta
    if data_range is not None:
        x_adv = x_adv.clamp(*data_range)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = run.sample_loss(run.forward(x_adv), y).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
        if norm == "linf":
            x_adv = x_adv + step_size * grad.sign()
        else:
            g = grad.flatten(2).norm(dim=2).clamp_min(1e-12)
            x_adv = x_adv + step_size * grad / g.view(*g.shape, *[1] * (grad.dim() - 2))
        x_adv = x + _project(x_adv - x, eps, norm)
        if data_range is not None:
            x_adv = x_adv.clamp(*data_range)
    return x_adv.detach()


@dataclass
class AdversarialTraining(Method):
    """Adversarial training (Madry et al.): the loss on PGD examples in the ε-ball; no λ.

    ``norm`` is "linf" or "l2"; ``step_size`` defaults to 2.5·ε/steps.
    """

    eps: float = 0.1
    steps: int = 7
    norm: str = "linf"
    step_size: float | None = None
    data_range: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self):
        super().__post_init__()
        if self.lam != 0:
            raise ValueError(f"AdversarialTraining: lam is not used and must be 0, got {self.lam}")
        self.eps = check_lam(self.eps, "AdversarialTraining: eps")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"AdversarialTraining: steps must be an int >= 1, got {self.steps!r}")
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"AdversarialTraining: norm must be 'linf' or 'l2', got {self.norm!r}")
        if self.data_range is not None:
            self.data_range = tuple(float(v) for v in self.data_range)

    def inputs(self, run, x, y):
        size = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        return pgd_batched(run, x, y, self.eps, self.steps, size, self.norm, self.data_range)

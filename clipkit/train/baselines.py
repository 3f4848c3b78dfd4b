"""The baselines CLIP is compared with: plain training, weight decay, gradient penalty,
spectral normalisation and adversarial training."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clipkit.train.protocol import Method, Run
from clipkit.train.schedules import check_lam


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

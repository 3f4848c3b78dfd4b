"""The baselines CLIP is compared with: plain training, weight decay, gradient penalty,
spectral normalisation and adversarial training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clipkit.core.pgd import check_in_range, pgd, uniform_ball
from clipkit.core.utils import check_int, check_positive, check_range
from clipkit.train.protocol import Method, Run
from clipkit.train.schedules import check_lam


@dataclass
class Standard(Method):
    """Plain training: no penalty."""

    takes_lambda = False


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
    takes_lambda = False
    vectorizable = False

    def __post_init__(self):
        super().__post_init__()
        check_int(self.n_power_iterations, "SpectralNorm: n_power_iterations", 1)

    def prepare(self, model):
        from torch.nn.utils.parametrizations import spectral_norm

        for module in list(model.modules()):
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                spectral_norm(module, n_power_iterations=self.n_power_iterations)
        return model


def pgd_on_copies(run: Run, x: Tensor, y: Tensor, eps: float, steps: int, step_size: float,
                  norm: str, data_range: tuple[float, float] | None) -> Tensor:
    """PGD (``clipkit.core.pgd``) on the model axis: maximise the loss in the ε-ball around x.

    x is (K, B, *in); the random start is uniform in the ball, drawn with each copy's own
    generator; the loss is each copy's sample loss.
    """
    shape = x.shape[1:]
    if norm == "linf":
        delta0 = run.draw(lambda g: torch.rand(shape, generator=g, dtype=x.dtype) * 2 - 1) * eps
    else:
        d = run.draw(lambda g: torch.randn(shape, generator=g, dtype=x.dtype))
        r = run.draw(lambda g: torch.rand(shape[:1], generator=g, dtype=x.dtype))
        delta0 = uniform_ball(d, r, eps, batch_dims=2)

    def grad_fn(x_adv: Tensor) -> tuple[Tensor, None]:
        x_adv = x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = run.sample_loss(run.forward(x_adv), y).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
        return grad, None

    return pgd(grad_fn, x, delta0, eps=eps, steps=steps, step_size=step_size, norm=norm,
               clamp=data_range, batch_dims=2)


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

    takes_lambda = False

    def __post_init__(self):
        super().__post_init__()
        self.eps = check_lam(self.eps, "AdversarialTraining: eps")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"AdversarialTraining: steps must be an int >= 1, got {self.steps!r}")
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"AdversarialTraining: norm must be 'linf' or 'l2', got {self.norm!r}")
        if self.step_size is not None:
            self.step_size = check_positive(self.step_size, "AdversarialTraining: step_size")
        if self.data_range is not None:
            self.data_range = check_range(self.data_range, "AdversarialTraining: data_range")

    def inputs(self, run, x, y):
        check_in_range(x, self.data_range, "the training inputs",
                       "AdversarialTraining(data_range=...)")
        size = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        return pgd_on_copies(run, x, y, self.eps, self.steps, size, self.norm, self.data_range)

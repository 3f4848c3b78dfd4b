"""λ schedules: constant, warm-up, and the discrepancy-principle rule.

A schedule gives the λ of each copy (a tensor over the model axis K) for the coming
epoch, from the base λ, the previous epoch's λ and training accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Constant", "Discrepancy", "Schedule", "Warmup", "check_lam"]


def check_lam(lam: object, name: str = "lam") -> float:
    """``lam`` as a float, or a ValueError naming it: a finite number >= 0 is accepted."""
    if isinstance(lam, (np.floating, np.integer)) or (
            isinstance(lam, torch.Tensor) and lam.ndim == 0 and lam.dtype != torch.bool):
        lam = lam.item()  # a numpy or torch scalar: np.float32(0.1), torch.tensor(0.1)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"{name} must be a finite number >= 0, got {lam!r} ({type(lam).__name__})")
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {lam!r}")
    return float(lam)


class Schedule:
    """Base class: λ for ``epoch`` (0-based) from the base λ, the last λ and accuracy."""

    needs_accuracy: bool = False

    def __call__(
        self,
        epoch: int,
        base: torch.Tensor,
        prev: torch.Tensor | None,
        train_acc: torch.Tensor | None,
    ) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Schedule):
    """λ_e = λ for every epoch."""

    def __call__(self, epoch, base, prev, train_acc):
        return base.clone()


@dataclass(frozen=True)
class Warmup(Schedule):
    """λ_e = 0 for the first ``epochs`` epochs, then the base λ."""

    epochs: int = 5

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"Warmup: epochs must be an int >= 0, got {self.epochs!r}")

    def __call__(self, epoch, base, prev, train_acc):
        return torch.zeros_like(base) if epoch < self.epochs else base.clone()


@dataclass(frozen=True)
class Discrepancy(Schedule):
    """The discrepancy-principle rule of the CLIP paper.

    After ``warmup`` epochs at λ = 0, start at the base λ; then every ``every`` epochs,
    λ ← λ + Δ while the training accuracy is above ``goal_acc``, else λ ← max(λ − Δ, 0).
    The accuracy is the previous epoch's: epoch e = warmup + j·every (j >= 1) takes
    acc[e − 1]. The authors' ``lamda_scheduler(warmup=w, cooldown=c)`` (their main.py:
    w = 5, c = 1) is ``Discrepancy(goal_acc, delta, every=c + 1, warmup=w + 1)``: their
    scheduler is built before the first epoch with λ = 0 and counts its warm-up from the
    call after it, so λ = 0 for w + 1 epochs (tested against their logic).
    """

    goal_acc: float = 0.95
    delta: float = 0.01
    every: int = 1
    warmup: int = 0
    needs_accuracy = True

    def __post_init__(self):
        if isinstance(self.goal_acc, bool) or not isinstance(self.goal_acc, (int, float)) \
                or not 0 < self.goal_acc <= 1:
            raise ValueError(f"Discrepancy: goal_acc must be in (0, 1], got {self.goal_acc!r}")
        check_lam(self.delta, "Discrepancy: delta")
        if not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"Discrepancy: every must be an int >= 1, got {self.every!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"Discrepancy: warmup must be an int >= 0, got {self.warmup!r}")

    def __call__(self, epoch, base, prev, train_acc):
        if epoch < self.warmup:
            return torch.zeros_like(base)
        if epoch == self.warmup or prev is None or train_acc is None:
            return base.clone()
        if (epoch - self.warmup) % self.every:
            return prev.clone()
        # in prev's dtype: a Δ made a float32 tensor first would shift a float64 λ by 1e-9
        up = (train_acc > self.goal_acc).to(prev.device)
        return torch.where(up, prev + self.delta, prev - self.delta).clamp_min(0.0)

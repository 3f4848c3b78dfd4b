"""What the estimators return: an estimate with its method, a layer's bound, the bracket."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class UnsupportedModuleError(TypeError):
    """A module whose Lipschitz constant clipkit can not bound (named in the message)."""


class BracketContradiction(RuntimeError):
    """An attained lower bound above a certified upper bound: one of them is not of the model
    (a forward that its layers do not describe, or a bug), so neither is reported."""


@dataclass(frozen=True)
class Estimate:
    """One estimate of Lip(f).

    Attributes:
        value: the number.
        kind: ``"lower"``, ``"upper"``, ``"exact"``, ``"grid"`` (a fine-grid value, no
            certificate) or ``"skipped"`` (no value: the method failed; NaN, reason in note).
        method: how it was obtained.
        iterations: ascent steps / power or Lanczos iterations / grid points (0 if none).
        seed: seed of the torch.Generator used (None if deterministic).
        seconds: wall time.
        note: anything else worth knowing (margins, sample counts, ...).
    """

    value: float
    kind: str
    method: str
    iterations: int = 0
    seed: int | None = None
    seconds: float = 0.0
    note: str = ""

    def __str__(self) -> str:
        extra = f", {self.note}" if self.note else ""
        seed = "" if self.seed is None else f", seed {self.seed}"
        return (
            f"{self.kind:>5} {self.value:.6g}  {self.method} "
            f"({self.iterations} it{seed}, {self.seconds:.3g} s{extra})"
        )


@dataclass(frozen=True)
class LayerBound:
    """The Lipschitz constant of one layer inside the product bound.

    ``estimate`` is the computed operator norm (for power/Lanczos: from below); ``bound`` is what
    enters the product (the estimate plus its certified margin; equal when exact).
    """

    name: str
    module: str
    input_shape: tuple[int, ...]
    estimate: float
    bound: float
    method: str
    iterations: int = 0


@dataclass(frozen=True)
class Bracket:
    """lower <= Lip(f) <= upper, with the estimates they come from."""

    lower: float
    upper: float
    lower_by: Estimate
    upper_by: Estimate
    estimates: tuple[Estimate, ...]
    layers: tuple[LayerBound, ...] = field(default=())

    @property
    def ratio(self) -> float:
        """upper / lower (inf when lower is 0)."""
        return self.upper / self.lower if self.lower > 0 else math.inf

    def __repr__(self) -> str:
        lines = [
            f"Bracket(lower={self.lower:.6g}, upper={self.upper:.6g}, "
            f"upper/lower={self.ratio:.4g})",
            f"  lower by: {self.lower_by.method}",
            f"  upper by: {self.upper_by.method}",
            "  estimates:",
        ]
        lines += [f"    {e}" for e in self.estimates]
        return "\n".join(lines)

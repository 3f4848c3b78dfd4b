"""What a training method is to the loop: the hooks of Method, and what it sees (Run, Step).

Every method works on a *model axis* K first: inputs are (K, B, *in), outputs
(K, B, *out), penalties (K,). ``ck.fit`` trains one model (K = 1); ``ck.fit_path`` trains
K copies at once with vmap. Random choices use one torch.Generator per copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from clipkit.core.affine_first import AffineFirst
from clipkit.core.utils import close_match_hint
from clipkit.train.schedules import Constant, Schedule, check_lam


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
    #: the forward with its first affine layer split off, where the model has one
    #: (``clipkit.core.affine_first``; CLIP's ascent uses it), else None
    affine_first: AffineFirst | None = None

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


class _KeywordsChecked(type):
    """Metaclass of Method: a setting the method does not have is an error that names the
    accepted ones (a dataclass's own says only "unexpected keyword argument")."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if dataclasses.is_dataclass(cls):
            fields = [f.name for f in dataclasses.fields(cls) if f.init]
            unknown = [k for k in kwargs if k not in fields]
            if unknown:
                raise TypeError(f"{cls.__name__} has no setting {unknown[0]!r}"
                                f"{close_match_hint(unknown[0], fields)}; "
                                f"its settings: {', '.join(sorted(fields))}")
        return super().__call__(*args, **kwargs)


@dataclass
class Method(metaclass=_KeywordsChecked):
    """Base class: a training method with a penalty weight λ and a λ schedule."""

    lam: float = 0.0
    schedule: Schedule = field(default_factory=Constant)

    #: whether the step's inputs must require grad (penalties on input gradients)
    input_grad = False
    #: whether the method has a penalty weight λ (else lam must be 0)
    takes_lambda = True
    #: whether the method can be trained as a vectorised λ-path
    vectorizable = True
    #: whether ``ck.fit`` trains a ``torch.compile``d model through the module it wraps
    #: (a method whose step calls the model several times, as CLIP's does)
    eager_model = False

    def __post_init__(self):
        self.lam = check_lam(self.lam, f"{type(self).__name__}: lam")
        if not self.takes_lambda and self.lam != 0:
            own = [f.name for f in dataclasses.fields(self) if f.name not in ("lam", "schedule")]
            hint = (f"; its own settings go by keyword, e.g. {type(self).__name__}({own[0]}=...)"
                    if own else "")
            raise ValueError(f"{type(self).__name__} has no penalty weight: lam must be 0, "
                             f"got {self.lam!r}{hint}")
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

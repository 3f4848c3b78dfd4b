"""Small helpers every layer shares: per-sample norms, eval mode, seeding, argument checks."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "broadcast_to",
    "check_choice",
    "check_class_labels",
    "check_int",
    "check_model_takes",
    "check_number",
    "check_positive",
    "check_range",
    "device_dtype",
    "eval_mode",
    "flat_norm",
    "one_thread",
    "resolve_device",
    "seeded",
    "sqrt_nonneg",
    "stacked",
]


def flat_norm(t: Tensor, dims: int = 1) -> Tensor:
    """ℓ2 norm over all but the first ``dims`` dimensions: ‖t[i]‖ (or ‖t[k, i]‖ for dims=2)."""
    # linalg.vector_norm directly: Tensor.norm goes through a Python wrapper to it
    return torch.linalg.vector_norm(t.flatten(dims), dim=dims)


def sqrt_nonneg(t: Tensor) -> Tensor:
    """sqrt(max(t, 0)) with derivative 0 where t <= 0.

    sqrt's derivative is infinite at 0, so where t is exactly 0 (a Jacobian that vanishes
    in float64) autograd's chain rule forms 0 * inf: NaN on torch up to 2.11 at least (later
    versions give 0). The inner ``where`` keeps that branch away from 0 altogether.
    """
    positive = t > 0
    return torch.where(positive, torch.where(positive, t, 1.0).sqrt(), 0.0)


def stacked(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A forward over a model axis for one map (N, *in) → (N, *out), e.g. a model:
    (K, M, *in) → (K, M, *out)."""

    def forward(xk: Tensor) -> Tensor:
        out = fn(xk.reshape(-1, *xk.shape[2:]))
        return out.view(xk.shape[0], xk.shape[1], *out.shape[1:])

    return forward


def broadcast_to(t: Tensor, like: Tensor) -> Tensor:
    """``t`` (shape a prefix of ``like``'s) with trailing singleton axes, to scale ``like``."""
    return t.view(*t.shape, *([1] * (like.dim() - t.dim())))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every submodule in eval mode inside the block; each one's flag restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.train(flag)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed torch's global generator inside the block (e.g. an initialisation), then restore it.

    ``None``: no seeding, the global generator as it is.
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch's CPU kernels on one thread inside the block; the setting restored afterwards.

    For small dense linear algebra (matrices of hundreds of rows), where a second thread
    gains little and MKL's threaded eigensolvers slowed down 10- to 100-fold on a loaded
    2-core machine (measured on the LipSDP certificates: 0.5 s vs 5-75 s).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of a model's first parameter (or buffer); CPU and default dtype."""
    p = next(iter(model.parameters()), None)
    if p is None:
        p = next(iter(model.buffers()), None)
    if p is None:
        return torch.device("cpu"), torch.get_default_dtype()
    return p.device, p.dtype


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" → the GPU when there is one, else the CPU; otherwise ``torch.device(device)``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; accepted: 'auto', 'cpu', 'cuda[:i]'") from exc
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise ValueError(f"device {device!r}: this machine has {count or 'no'} CUDA "
                             f"GPU{'s' if count != 1 else ''} visible to torch; use 'auto' "
                             f"(the GPU where there is one, else the CPU) or 'cpu'")
    return dev


def check_finite(x: Tensor, name: str = "x") -> None:
    """A ValueError naming ``x`` and how many of its samples (dim 0) hold NaN or inf: their
    outputs would be NaN, which an argmax counts as class 0 (so "correct" for label 0)."""
    if x.numel() and not bool(torch.isfinite(x).all()):
        n = len(x) if x.ndim else 1
        bad = int((~torch.isfinite(x.reshape(n, -1))).any(1).sum())
        raise ValueError(f"{name}: {bad} of {n} inputs contain NaN or infinite values (their "
                         f"outputs would be NaN, which argmax counts as class 0)")


def check_int(value: Any, name: str, low: int = 0) -> int:
    """``value`` if it is an int >= ``low`` (a bool is not an int), else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def check_model_takes(model: nn.Module, x: Tensor, name: str = "x", place: bool = False
                      ) -> Tensor:
    """A ValueError naming the inputs where ``model`` cannot take ``x`` (N, *input_shape):
    one forward of x[:1] in eval mode, without a graph; with ``place``, x[:1] moved to the
    model's device and dtype first (as the caller's own forwards do), else as it is.

    Without it, inputs of the wrong shape fail deep inside training or a bound with torch's
    own message about matrix shapes, which does not say which input was wrong. Returns
    the model's output on x[:1].
    """
    if len(x) == 0:
        raise ValueError(f"{name}: no samples (shape {tuple(x.shape)})")
    sample = x[:1].to(*device_dtype(model)) if place else x[:1]
    with eval_mode(model), torch.no_grad():
        try:
            return model(sample)
        except (RuntimeError, ValueError) as exc:  # BatchNorm2d raises ValueError for 3-D x
            raise ValueError(
                f"{name}: the model does not take these inputs (shape {tuple(x.shape)}, "
                f"{x.dtype}, i.e. samples of shape {tuple(x.shape[1:])}): {exc}") from exc


def check_class_labels(y: Tensor, classes: int, name: str = "y") -> Tensor:
    """``y`` as class indices (N,) long, or a ValueError naming it: a 1-D tensor of integer
    values in [0, classes) (a model with ``classes`` outputs)."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a tensor of class indices, got {type(y).__name__}")
    if y.dim() != 1:
        hint = " (one-hot labels: pass y.argmax(1))" if y.dim() == 2 and y.shape[1] > 1 else ""
        raise ValueError(f"{name}: class labels must be a 1-D tensor (N,) of class indices, "
                         f"got shape {tuple(y.shape)}{hint}")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise ValueError(f"{name}: class labels must be whole numbers, got values such as "
                         f"{float(y[y != y.round()][0])!r}")
    if len(y) and (bool((y < 0).any()) or bool((y >= classes).any())):
        bad = y[(y < 0) | (y >= classes)][0]
        raise ValueError(f"{name}: class labels must lie in [0, {classes}) for a model with "
                         f"{classes} outputs, got {bad.item()!r}")
    return y.long()


def check_number(value: Any, name: str, low: float = 0.0) -> float:
    """``value`` as a float if it is a finite number >= ``low``, else an error naming it.

    A TypeError for something that is not a number (a bool is not), a ValueError for a
    number out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"{name} must be a finite number >= {low:g}, got {value!r} ({type(value).__name__})"
        )
    if not math.isfinite(value) or value < low:
        raise ValueError(f"{name} must be a finite number >= {low:g}, got {value!r}")
    return float(value)


def check_positive(value: Any, name: str) -> float:
    """``value`` as a float if it is a finite number > 0, else an error naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a finite number > 0, got {value!r} "
                        f"({type(value).__name__})")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_range(value: Any, name: str) -> tuple[float, float]:
    """``value`` as (low, high), two finite numbers with low < high, else a ValueError."""
    try:
        lo, hi = (check_number(v, name, -math.inf) for v in value)  # any finite numbers
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not lo < hi:
        raise ValueError(f"{name} must be (low, high), two finite numbers with low < high, "
                         f"got {value!r}")
    return lo, hi


def close_match_hint(name: object, accepted: Iterable[Any]) -> str:
    """' (did you mean 'x'?)' for a near miss of ``name`` among ``accepted``, else ''."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(a) for a in accepted], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(value: Any, name: str, accepted: Iterable[Any]) -> Any:
    """``value`` if it is one of ``accepted``, else a ValueError listing them."""
    accepted = tuple(accepted)
    if value not in accepted:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, accepted))}; got {value!r}")
    return value

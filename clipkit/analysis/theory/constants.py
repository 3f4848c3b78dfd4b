"""The optimal constant c* = argmin_c E(c), and how far a model's outputs are from a constant."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clipkit.analysis.theory.inputs import (
    as_y,
    check_loss,
    to_numpy,
)


@dataclass(frozen=True)
class OptimalConstant:
    """c* = argmin_c E(c) and E(c*).

    Attributes:
        c: the constant; shape (m,) for the squared loss, (num_classes,) logits for
            cross-entropy (log class frequencies: logsumexp(c) = 0; ``-inf`` for a
            class absent from y).
        value: E(c*) — mean ‖y − ȳ‖² (squared), the entropy −Σ p_k log p_k (cross-entropy).
        loss: ``"squared"`` or ``"cross_entropy"``.
    """

    c: np.ndarray
    value: float
    loss: str


def class_labels(y) -> np.ndarray:
    """Class labels for cross-entropy: integers ≥ 0 of shape (N,) (or (N, 1)), as int64.

    One-hot or probability labels (N, K) are refused rather than flattened into N·K labels.
    """
    labels = to_numpy(y, "y")
    if labels.ndim > 2 or (labels.ndim == 2 and labels.shape[1] != 1):
        raise ValueError(f"cross_entropy needs class labels of shape (N,), got y of shape "
                         f"{tuple(labels.shape)}; for one-hot labels pass y.argmax(1)")
    labels = labels.reshape(-1)
    if len(labels) < 1:
        raise ValueError("y is empty")
    if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)) or labels.min() < 0:
        raise ValueError("cross_entropy needs integer class labels y >= 0")
    return labels.astype(np.int64)


def optimal_constant(y, loss: str = "squared", num_classes: int | None = None) -> OptimalConstant:
    """The best constant prediction c* = argmin_c (1/N) Σ ℓ(c, y_i), and E(c*).

    * squared loss ℓ(c, y) = ‖c − y‖²: c* = ȳ, E(c*) = (1/N) Σ ‖y_i − ȳ‖² (Var(y) for m = 1).
    * cross-entropy ℓ(c, y) = −log softmax(c)_y with integer labels y ∈ {0, …, K−1}:
      softmax(c*) = class frequencies p, so c* = log p (defined up to an additive
      constant; this choice has logsumexp(c*) = 0) and E(c*) = −Σ p_k log p_k.
      A class absent from y has p_k = 0: the infimum is approached as its logit → −∞
      and not attained by finite logits, so c*_k = −inf (softmax gives it 0; the loss
      stays finite because no label asks for it). K is ``num_classes`` or max(y) + 1.
    """
    loss = check_loss(loss)
    if loss == "squared":
        y2, _ = as_y(y)
        if len(y2) < 1:
            raise ValueError("y is empty")
        c = y2.mean(axis=0)
        return OptimalConstant(c=c, value=float(np.mean(np.sum((y2 - c) ** 2, axis=1))), loss=loss)
    labels = class_labels(y)
    k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if k <= labels.max():
        raise ValueError(f"num_classes = {num_classes} but y has label {int(labels.max())}")
    p = np.bincount(labels, minlength=k) / len(labels)
    with np.errstate(divide="ignore"):
        c = np.log(p)
    value = float(-np.sum(p[p > 0] * np.log(p[p > 0])))
    return OptimalConstant(c=c, value=value, loss=loss)


@dataclass(frozen=True)
class ConstGap:
    """Distance of outputs f(x_i) to a constant c.

    Attributes:
        rms: sqrt((1/N) Σ ‖f(x_i) − c‖²).
        max: max_i ‖f(x_i) − c‖.
        spread: per output dimension, max_i f(x_i) − min_i f(x_i) (shape (m,)); 0 for a
            constant function whatever c is.
    """

    rms: float
    max: float
    spread: np.ndarray


def model_outputs(model_or_outputs, x=None) -> np.ndarray:
    """Outputs as (N, m) float64: ``model(x)`` (no grad, eval mode, restored) or the array."""
    if callable(model_or_outputs):
        if x is None:
            raise ValueError("x is needed when a model is given")
        model = model_or_outputs
        xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        if xt.dim() == 1:  # x given as (N,): a model on 1-D inputs expects (N, 1)
            xt = xt[:, None]
        was_training = getattr(model, "training", None)
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        if params:
            xt = xt.to(device=params[0].device, dtype=params[0].dtype)
        if isinstance(model, torch.nn.Module):
            model.eval()
        try:
            with torch.no_grad():
                out = model(xt)
        finally:
            if isinstance(model, torch.nn.Module) and was_training:
                model.train()
        out = to_numpy(out, "model output")
    else:
        out = to_numpy(model_or_outputs, "outputs")
    return out.reshape(len(out), -1)


def const_gap(model_or_outputs, x=None, c=None) -> ConstGap:
    """How far f(x_i) is from the constant c: RMS and max distance, and the output spread.

    ``model_or_outputs`` is a model (called on ``x``, in eval mode without gradients) or
    its outputs, shape (N,) or (N, m). ``c`` defaults to the outputs' mean.
    """
    out = model_outputs(model_or_outputs, x)
    c = out.mean(axis=0) if c is None else to_numpy(c, "c").reshape(-1)
    if c.shape[0] not in (1, out.shape[1]):
        raise ValueError(f"c has {c.shape[0]} entries, the outputs have {out.shape[1]}")
    dist = np.sqrt(np.sum((out - c) ** 2, axis=1))
    return ConstGap(
        rms=float(np.sqrt(np.mean(dist**2))),
        max=float(dist.max()),
        spread=out.max(axis=0) - out.min(axis=0),
    )

"""How a result's coordinates read in a figure's legend (the figures and the explorer).

``line_label("method", "clip")`` → ``CLIP``; ``line_label("lam", 0.1)`` → ``λ = 0.1``;
``line_label("last_activation", True)`` → ``published (sigmoid on logits)``; and how a
variable reads on an axis: ``var_label("test_acc")`` → ``clean test accuracy``.
"""

from __future__ import annotations

__all__ = ["LABEL_ORDER", "METHOD_NAMES", "VAR_LABELS", "line_label", "var_label"]

#: the dims that name a line, in the order they appear in its label
LABEL_ORDER = ("method", "lam", "last_activation", "dataset")
#: how a method's name reads in a legend
METHOD_NAMES = {"standard": "no regularization", "weight_decay": "weight decay", "clip": "CLIP",
                "gradient_penalty": "gradient penalty", "spectral_norm": "spectral norm",
                "adversarial": "adversarial training"}
#: how a history variable reads on an axis (accuracies are fractions, 0 to 1, in every figure)
VAR_LABELS = {"test_acc": "clean test accuracy", "acc": "training accuracy",
              "loss": "training loss", "test_loss": "test loss", "penalty": "penalty R(θ)",
              "lam_epoch": "λ in the epoch", "lip": "Lip_X estimate (CLIP's pairs)",
              "skipped": "fraction of steps without penalty", "time": "seconds since the start"}


def line_label(dim: str, value) -> str:
    """How one coordinate of a line reads in a legend: ``CLIP``, ``λ = 0.1``, ``corrected``."""
    if dim == "method":
        return METHOD_NAMES.get(str(value), str(value))
    if dim == "lam":
        return f"λ = {_fmt(value)}"
    if dim == "last_activation":
        return "published (sigmoid on logits)" if bool(value) else "corrected"
    if dim == "dataset":
        return str(value)
    return f"{dim} = {_fmt(value)}"


def var_label(var: str) -> str:
    """How a variable reads on an axis: ``clean test accuracy``, not ``test_acc``."""
    return VAR_LABELS.get(var, var.replace("_", " "))


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)

"""After each epoch: measurements into the history, and which epoch's weights are kept.

``ck.fit(..., on_epoch=measure, select=ck.BestEpoch("val_acc_pgd", goal_acc=0.95))``:

* ``on_epoch(models, epoch)`` is called after every epoch (after the test evaluation) with
  the K trained copies as ``nn.Module`` in eval mode (``ck.fit``: the model itself); it
  returns ``{name: K values}`` (NaN where it measured nothing this epoch), recorded in the
  history like ``test_acc``. What it measures (an attack on a validation split, say) is the
  caller's: the training layer does not know attacks.
* ``select`` keeps, per copy, the weights of the epoch with the highest score instead of
  the last epoch's (:class:`BestEpoch`, the CLIP authors' model selection). The history
  gets ``score`` (per epoch) and ``selected`` (1 at the kept epoch, 0 elsewhere).

Only parameters are kept and restored; buffers (batch-norm statistics) stay those of the
last epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["BestEpoch", "EpochMeasure", "Keeper", "measured"]

#: ``on_epoch(models, epoch) -> {name: K values}``; ``epoch`` is 0-based
EpochMeasure = Callable[[Sequence[nn.Module], int], Mapping[str, Any]]


@dataclass(frozen=True)
class BestEpoch:
    """Keep the weights of the epoch with the highest score (per copy).

    score_e = h_e + 1[acc_e > goal_acc], with h the history variable ``metric`` (e.g. the
    validation accuracy under an attack, recorded by an ``on_epoch`` measure) and acc the
    training accuracy of epoch e; no indicator when ``goal_acc`` is None. With
    ``mode="min"`` (for a loss) h_e is replaced by −h_e, so the lowest value wins; a metric
    named ``*loss`` needs it (the highest loss would keep the worst epoch). Ties go to the
    later epoch; an epoch whose score is NaN is never chosen (a copy without any finite
    score keeps its last epoch).

    The CLIP authors' rule (their ``best_model``, with γ = 0) is
    ``BestEpoch("<validation accuracy under their PGD-7>", goal_acc)``: an epoch above the
    goal accuracy beats every epoch below it, and among those the validation accuracy
    decides.
    """

    metric: str
    goal_acc: float | None = None
    mode: str = "max"

    def __post_init__(self):
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"BestEpoch: metric must be a history variable's name, got "
                             f"{self.metric!r}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"BestEpoch: mode must be 'max' or 'min', got {self.mode!r}")
        if self.mode == "max" and self.metric.endswith("loss"):
            raise ValueError(f"BestEpoch: {self.metric!r} is a loss, and keeping its highest "
                             f"value keeps the worst epoch; pass mode='min'")
        if self.goal_acc is not None and (
                isinstance(self.goal_acc, bool) or not isinstance(self.goal_acc, (int, float))
                or not 0 <= self.goal_acc <= 1):
            raise ValueError(f"BestEpoch: goal_acc must be None or in [0, 1], got "
                             f"{self.goal_acc!r}")

    @property
    def needs_accuracy(self) -> bool:
        return self.goal_acc is not None

    def score(self, epoch: Mapping[str, np.ndarray]) -> np.ndarray:
        """The score of one epoch per copy (K,), from that epoch's history values."""
        if self.metric not in epoch:
            raise KeyError(f"BestEpoch: the history has no {self.metric!r} (it has "
                           f"{', '.join(sorted(epoch))}); record it with an on_epoch measure")
        value = np.asarray(epoch[self.metric], dtype=float)
        if self.mode == "min":
            value = -value
        if self.goal_acc is not None:
            value = value + (np.asarray(epoch["acc"], dtype=float) > self.goal_acc)
        return value

    def config(self) -> dict[str, Any]:
        return {"select": "BestEpoch", "metric": self.metric, "goal_acc": self.goal_acc,
                "mode": self.mode}


def measured(values: Mapping[str, Any], k: int) -> dict[str, Tensor]:
    """An ``on_epoch`` result checked: each name with K finite-or-NaN numbers, as tensors."""
    if not isinstance(values, Mapping):
        raise TypeError(f"on_epoch must return a mapping of names to {k} values, got "
                        f"{type(values).__name__}")
    out = {}
    for name, value in values.items():
        arr = torch.as_tensor(np.asarray(value, dtype=float).reshape(-1))
        if arr.numel() != k:
            raise ValueError(f"on_epoch: {name!r} has {arr.numel()} values; one per trained "
                             f"copy ({k}) is needed")
        out[str(name)] = arr
    return out


class Keeper:
    """The best epoch so far per copy and a copy of its parameters (``BestEpoch`` at work)."""

    def __init__(self, rule: BestEpoch, params: dict[str, Tensor]):
        self.rule = rule
        k = next(iter(params.values())).shape[0]
        self.best = np.full(k, -math.inf)
        self.epoch = np.full(k, -1)
        self.scores: list[np.ndarray] = []
        self.saved = {n: p.detach().clone() for n, p in params.items()}

    def after_epoch(self, epoch: int, values: Mapping[str, np.ndarray],
                    params: dict[str, Tensor]) -> None:
        """Score the epoch; where it is at least the best so far, remember its weights."""
        score = self.rule.score(values)
        self.scores.append(score)
        better = np.nan_to_num(score, nan=-math.inf) >= self.best
        better &= ~np.isnan(score)
        if not better.any():
            return
        self.best = np.where(better, score, self.best)
        self.epoch = np.where(better, epoch, self.epoch)
        mask = torch.as_tensor(better)
        for n, p in params.items():
            m = mask.to(p.device).view(-1, *([1] * (p.dim() - 1)))
            self.saved[n] = torch.where(m, p.detach(), self.saved[n])

    def restore(self, params: dict[str, Tensor]) -> dict[str, np.ndarray]:
        """Write the kept weights into ``params``; the history's ``score`` and ``selected``."""
        n_epochs = len(self.scores)
        last = np.where(self.epoch < 0, n_epochs - 1, self.epoch)
        with torch.no_grad():
            for n, p in params.items():
                keep = torch.as_tensor(self.epoch >= 0, device=p.device)
                m = keep.view(-1, *([1] * (p.dim() - 1)))
                p.copy_(torch.where(m, self.saved[n], p))
        selected = np.zeros((len(last), n_epochs))
        selected[np.arange(len(last)), last] = 1.0
        return {"score": np.stack(self.scores, axis=1), "selected": selected}

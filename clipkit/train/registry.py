"""Methods and schedules by name, for notebooks, sweeps and command lines.

``make_method("clip", 0.1, schedule=make_schedule("warmup", warmup=6), pairs=500)`` is
``ck.CLIP(lam=0.1, schedule=ck.Warmup(6), pairs=500)``; ``clip_preset="authors"`` starts
from ``ck.CLIP.authors()``. Unknown names and options are errors that list what is accepted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from clipkit.core.utils import close_match_hint
from clipkit.train.baselines import (
    AdversarialTraining,
    GradientPenalty,
    SpectralNorm,
    Standard,
    WeightDecay,
)
from clipkit.train.clip import CLIP
from clipkit.train.protocol import Method
from clipkit.train.schedules import Constant, Discrepancy, Schedule, Warmup

__all__ = ["METHODS", "SCHEDULES", "has_lambda", "make_method", "make_schedule"]

#: the methods by the name a notebook parameter or sweep spec gives
METHODS: dict[str, type[Method]] = {
    "standard": Standard,
    "weight_decay": WeightDecay,
    "clip": CLIP,
    "gradient_penalty": GradientPenalty,
    "spectral_norm": SpectralNorm,
    "adversarial": AdversarialTraining,
}
SCHEDULES = ("constant", "warmup", "discrepancy")
PRESETS = ("default", "authors")


def _known(name: str, accepted, what: str) -> None:
    if name not in accepted:
        raise ValueError(f"unknown {what} {name!r}{close_match_hint(name, accepted)}; accepted: "
                         f"{', '.join(map(repr, accepted))}")


def make_schedule(kind: str = "constant", *, warmup: int = 0, goal_acc: float = 0.95,
             delta: float = 0.01, every: int = 1) -> Schedule:
    """The λ schedule ``kind``: "constant"; "warmup" (λ = 0 for ``warmup`` epochs);
    "discrepancy" (after ``warmup`` epochs, every ``every`` epochs λ ± ``delta`` as the
    training accuracy is above or below ``goal_acc``)."""
    _known(kind, SCHEDULES, "schedule")
    if kind == "warmup":
        return Warmup(warmup)
    if kind == "discrepancy":
        return Discrepancy(goal_acc=goal_acc, delta=delta, every=every, warmup=warmup)
    return Constant()


def has_lambda(name: str) -> bool:
    """Whether the method ``name`` has a penalty weight λ (the others take none)."""
    _known(name, METHODS, "method")
    return METHODS[name].takes_lambda


def make_method(name: str, lam: float | None = None, *, schedule: Schedule | None = None,
                clip_preset: str = "default", **options: Any) -> Method:
    """The method called ``name`` with penalty weight ``lam`` (None: the method's default).

    Args:
        name: one of :data:`METHODS`.
        lam: λ; must be None or 0 for the methods without a penalty (standard,
            spectral_norm, adversarial).
        schedule: the λ schedule (default: the method's, e.g. the authors' warm-up).
        clip_preset: for CLIP, "default" (``ck.CLIP(...)``) or "authors"
            (``ck.CLIP.authors(...)``); the other methods have no presets and ignore it.
        options: the method's other settings, e.g. ``pairs=500`` (clip), ``eps=0.1``
            (adversarial); a name the method does not have is an error.
    """
    _known(name, METHODS, "method")
    _known(clip_preset, PRESETS, "clip_preset")
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        accepted = sorted(fields - {"lam", "schedule"})
        raise ValueError(f"method {name!r} has no option(s) {', '.join(map(repr, unknown))}"
                         f"{close_match_hint(unknown[0], accepted)}; "
                         f"accepted: {', '.join(accepted)}")
    if not has_lambda(name):
        if lam not in (None, 0, 0.0):
            raise ValueError(f"method {name!r} has no λ; leave lam empty (or 0), got {lam!r}")
        lam = None
    settings = dict(options)
    if lam is not None:
        settings["lam"] = lam
    if schedule is not None:
        settings["schedule"] = schedule
    if cls is CLIP and clip_preset == "authors":
        return CLIP.authors(**settings)
    return cls(**settings)

"""Measures after each training epoch: the CLIP authors' validation score and learning curves.

:func:`epoch_measure` builds the ``on_epoch`` function that ``ck.fit`` / ``ck.fit_path``
call after every epoch (``clipkit.train.selection``); it records, per trained copy:

========================  ====================================================================
history variable          meaning
========================  ====================================================================
``val_acc_pgd``           accuracy on the held-out validation images under the authors'
                          PGD-ℓ2 (ε = 2, 7 iterations), counted as their validation step
                          counts it: the prediction on the attacked image is right
``curve_<attack>``        robust accuracy at ε (a point counts when clean and attacked are
                          both right) on a fixed set of test images, every ``every`` epochs
                          and at the last; NaN in between
========================  ====================================================================

:func:`authors_selection` is their model selection on top of it: the weights of the epoch
with the highest ``val_acc_pgd + 1[train accuracy > goal]`` are kept and tested.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from clipkit.analysis import attacks as atk
from clipkit.core.provenance import NAN_MEANS
from clipkit.core.utils import check_int
from clipkit.experiments.evaluate import make_attack
from clipkit.train.selection import BestEpoch, EpochMeasure

__all__ = ["CURVE_DESCRIPTIONS", "VALIDATION", "authors_selection", "describe", "epoch_measure"]

#: the history variable of the authors' validation score
VALIDATION = "val_acc_pgd"
CURVE_DESCRIPTIONS = {
    VALIDATION: "accuracy on the held-out validation images under the authors' PGD-ℓ2 "
                "(ε = {eps:g}, {val_steps} iterations): the prediction on the attacked image "
                "is right",
    "curve": "accuracy under {attack} (ε = {eps:g}, {steps} steps) on {n} test images, a point "
             "counting when clean and attacked are both right; NaN where not measured",
}


def authors_selection(goal_acc: float) -> BestEpoch:
    """The authors' best-epoch rule (their ``best_model``, γ = 0): score = the validation
    accuracy under their PGD-7 + 1[train accuracy > ``goal_acc``]; ties to the later epoch."""
    return BestEpoch(VALIDATION, goal_acc=goal_acc)


def _attacked_right(model: nn.Module, attack: atk.Attack, x: Tensor, y: Tensor,
                    batch_size: int) -> tuple[int, int]:
    """(attacked prediction right, clean and attacked both right), summed over batches."""
    right = both = 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
        xa = attack(model, xb, yb)
        with torch.no_grad():
            ok_a = model(xa).argmax(1) == yb
            ok_c = model(xb).argmax(1) == yb
        right += int(ok_a.sum())
        both += int((ok_a & ok_c).sum())
    return right, both


def epoch_measure(
    *,
    epochs: int,
    val: tuple[Tensor, Tensor] | None = None,
    val_steps: int = 7,
    curve: tuple[Tensor, Tensor] | None = None,
    curve_attacks: Sequence[str] = ("pgd_l2_authors", "pgd_l2"),
    curve_steps: int = 20,
    every: int = 1,
    eps: float = 2.0,
    seed: int = 0,
    batch_size: int = 1000,
) -> EpochMeasure:
    """The ``on_epoch`` measure: the authors' validation score on ``val`` (every epoch) and
    robust accuracy under each of ``curve_attacks`` on ``curve`` (every ``every`` epochs
    and at epoch ``epochs − 1``). Each attack starts from the same seeded draw every epoch.
    """
    if val is None and curve is None:
        raise ValueError("epoch_measure: give validation data (val) or curve data (curve)")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"epoch_measure: every must be an int >= 1, got {every!r}")
    check_int(epochs, "epoch_measure: epochs", 1)
    if isinstance(curve_attacks, str):
        raise TypeError(f"epoch_measure: curve_attacks must be a list of attack names, got "
                        f"the string {curve_attacks!r} (write [{curve_attacks!r}])")
    curve_attacks = list(curve_attacks)
    for name in curve_attacks:  # now, not when the first curve epoch comes
        make_attack(name, seed=seed, steps=curve_steps).with_eps(eps)

    def measure(models: Sequence[nn.Module], epoch: int) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        if val is not None:
            vals = []
            for m in models:
                attack = atk.AuthorsPGD(eps=eps, steps=val_steps, seed=seed)
                right, _ = _attacked_right(m, attack, *val, batch_size)
                vals.append(right / len(val[1]))
            out[VALIDATION] = vals
        if curve is not None:
            due = (epoch + 1) % every == 0 or epoch == epochs - 1
            for name in curve_attacks:
                if not due:
                    out[f"curve_{name}"] = [float("nan")] * len(models)
                    continue
                accs = []
                for m in models:
                    attack = make_attack(name, seed=seed, steps=curve_steps).with_eps(eps)
                    _, both = _attacked_right(m, attack, *curve, batch_size)
                    accs.append(both / len(curve[1]))
                out[f"curve_{name}"] = accs
        return out

    return measure


def describe(ds, *, eps: float, val_steps: int, curve_steps: int, n_curve: int):
    """Descriptions of the measured variables of a result Dataset (in place; returned)."""
    if VALIDATION in ds:
        ds[VALIDATION].attrs["description"] = CURVE_DESCRIPTIONS[VALIDATION].format(
            eps=eps, val_steps=val_steps)
    for name in ds.data_vars:
        if str(name).startswith("curve_"):
            attack = str(name)[len("curve_"):]
            steps = curve_steps if attack.startswith("pgd") else 1
            ds[name].attrs["description"] = CURVE_DESCRIPTIONS["curve"].format(
                attack=attack, eps=eps, steps=steps, n=n_curve)
            ds[name].attrs[NAN_MEANS] = "an epoch where it was not measured"
    return ds


"""The classification rows of the report: each number with its seeds, mean and spread.

One row per (dataset, setting, method, λ) of a classification sweep
(``notebooks/classification.ipynb``); every number of a row is a :class:`Stat` over the
sweep's seeds. :class:`Change` compares two of them with a stated tolerance: the
verdicts of the report ("raises", "does not change") are computed from it, never typed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import xarray as xr

__all__ = [
    "AGREE_TOL",
    "CERTIFIED",
    "CERTIFIED_EPS",
    "certified_at",
    "GAIN_TOL",
    "METRICS",
    "ROW_NAMES",
    "Change",
    "Stat",
    "row_json",
    "run_of",
    "table_rows",
]

#: two accuracies closer than this (2 points) count as "no change"
GAIN_TOL = 0.02
#: a measured accuracy within this (5 points) of a published one "agrees" with it
AGREE_TOL = 0.05
#: the certified ℓ2 robust accuracy over ε (``evaluate_classifier``); a column appears in
#: the tables when the result files have it (older files do not)
CERTIFIED = "certified_acc"
#: the radius of the certified column: global certificates of these networks reach a few
#: tenths of the unit at most, so at the PGD columns' ε = 2 it would read 0 everywhere
CERTIFIED_EPS = 0.1
ROW_NAMES = {"standard": "none", "weight_decay": "weight decay", "clip": "CLIP (goal 0.95)"}
#: a row's robust accuracies: name -> (attack, ε)
METRICS = {
    "noise_1": ("noise", 1.0),  # the authors' Gaussian noise, σ = 1
    "noise_03": ("noise", 0.3),  # from our grid
    "pgd_authors": ("pgd_l2_authors", 2.0),  # their attack, their ε
    "pgd": ("pgd_l2", 2.0),  # clipkit's PGD-ℓ2, the same ε
}


@dataclass(frozen=True)
class Stat:
    """A number over seeds: its finite values, mean, sample standard deviation, range."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, da: xr.DataArray | float) -> Stat:
        arr = np.asarray(getattr(da, "values", da), dtype=float).reshape(-1)
        return cls(tuple(float(v) for v in arr if math.isfinite(v)))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def sd(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else float("nan")

    @property
    def lo(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def hi(self) -> float:
        return max(self.values) if self.values else float("nan")

    def pct(self) -> str:
        """``mean ± sd`` in percent (one decimal); the mean alone for one seed; – for none."""
        if not self.values:
            return "–"
        text = f"{100 * self.mean:.1f}"
        return text + (f" ± {100 * self.sd:.1f}" if self.n > 1 else "")

    def num(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}g}" if self.values else "–"


@dataclass(frozen=True)
class Change:
    """``base`` → ``new`` with tolerance ``tol``: the mean gain, and whether the seeds agree.

    ``separated``: every seed of one row beats every seed of the other by more than
    ``tol`` (the gain is larger than the seeds' spread), in the direction of the gain.
    """

    base: Stat
    new: Stat
    tol: float = GAIN_TOL

    @property
    def gain(self) -> float:
        return self.new.mean - self.base.mean

    @property
    def separated(self) -> bool:
        if self.gain > 0:
            return self.new.lo - self.base.hi > self.tol
        return self.base.lo - self.new.hi > self.tol

    @property
    def seeds(self) -> int:
        return min(self.base.n, self.new.n)

    def verb(self, up: str = "raises", down: str = "lowers") -> str:
        """The verdict as a verb phrase on "it", e.g. "raises it by more than the seeds'
        spread", "raises it on average only, within the seeds' spread"."""
        if not math.isfinite(self.gain) or abs(self.gain) <= self.tol:
            return f"changes it by {100 * self.tol:g} points or less (counted as no change)"
        word = up if self.gain > 0 else down
        if self.seeds < 2:
            return f"{word} it (one seed: no spread to compare with)"
        if self.separated:
            return f"{word} it by more than the seeds' spread"
        return f"{word} it on average only, within the seeds' spread"


def _kept_epoch(d: xr.Dataset) -> xr.DataArray | float:
    """The epoch whose weights were tested (``selected``), else the last one."""
    if "selected" in d:
        return d.epoch.where(d.selected == 1).max("epoch")
    return float(d.epoch.max()) if "epoch" in d.dims else float("nan")


def _at(da: xr.DataArray, attack: str, eps: float) -> tuple[xr.DataArray | float, float]:
    """Accuracy under ``attack`` at ``eps`` (the nearest ε of its grid) and that ε."""
    if attack not in da.attack.values:
        return float("nan"), float("nan")
    sub = da.sel(attack=attack)
    sub = sub.dropna("eps", how="all")
    if sub.sizes["eps"] == 0:
        return float("nan"), float("nan")
    found = float(sub.eps.sel(eps=eps, method="nearest"))
    return sub.sel(eps=found), found


def certified_at(da: xr.DataArray,
                 eps: float = CERTIFIED_EPS) -> tuple[xr.DataArray | float, float]:
    """Certified accuracy at ``eps``, or at the nearest positive ε of its grid that has data
    (ε = 0 is the clean accuracy, never a certificate), and that ε; NaN, NaN without data."""
    return _at(da.where(da.eps > 0).expand_dims(attack=["certified"]), "certified", eps)


def run_of(ds: xr.Dataset, var: str = "test_acc") -> xr.Dataset:
    """``ds`` at the first λ where ``var`` has data (a sweep over methods stacks each
    method's own λ along ``lam``, NaN elsewhere); no ``lam`` dimension left."""
    if "lam" not in ds.dims:
        return ds
    da = ds[var]
    other = [x for x in da.dims if x != "lam"]
    has = da.notnull().any(other).values if other else da.notnull().values
    return ds.isel(lam=int(np.argmax(has)))


def table_rows(ds: xr.Dataset, row_name: str | None = None) -> list[dict]:
    """One dict per (dataset, last_activation, method, λ) of a classification sweep.

    Every number is a :class:`Stat` over the seeds: ``clean``, the robust accuracies of
    :data:`METRICS` (their ε in ``<name>_eps``), ``lip_lower``, ``lip_upper``,
    ``certified`` (:data:`CERTIFIED` at :data:`CERTIFIED_EPS`, or the nearest positive ε of
    its grid; its ε in
    ``certified_eps``; empty when the result files lack it), ``epoch`` (the tested epoch)
    and ``lam_end`` (λ of the last epoch).
    """
    for name in ("dataset", "last_activation", "method"):
        if name not in ds.dims and name in ds.coords:
            ds = ds.expand_dims(name)
    rows = []
    for dataset in ds.dataset.values:
        for last in ds.last_activation.values:
            for method in ds.method.values:
                d = ds.sel({"dataset": dataset, "last_activation": last, "method": method})
                for lv in d.lam.values:
                    e = d.sel(lam=lv)
                    clean = Stat.of(e.clean_acc)
                    if not clean.n:
                        continue
                    kept = _kept_epoch(e)  # of the seeds that were evaluated (not diverged)
                    if isinstance(kept, xr.DataArray):
                        kept = kept.where(e.clean_acc.notnull())
                    row = {
                        "dataset": str(dataset),
                        "setting": "published (sigmoid on logits)" if bool(last)
                        else "corrected model",
                        "last_activation": bool(last),
                        "method": str(method),
                        "row": row_name or ROW_NAMES.get(str(method), str(method)),
                        "lam": float(lv),
                        "clean": clean,
                        "lip_lower": Stat.of(e.lip_lower),
                        "lip_upper": Stat.of(e.lip_upper),
                        "epoch": Stat.of(kept),
                        "lam_end": Stat.of(e.lam_epoch.isel(epoch=-1)) if "lam_epoch" in e
                        else Stat(()),
                        "seeds": clean.n,
                    }
                    for key, (attack, eps) in METRICS.items():
                        value, found = _at(e.robust_acc, attack, eps)
                        row[key], row[f"{key}_eps"] = Stat.of(value), found
                    value, found = (certified_at(e[CERTIFIED]) if CERTIFIED in e
                                    else (float("nan"), float("nan")))
                    row["certified"], row["certified_eps"] = Stat.of(value), found
                    rows.append(row)
    return rows


def row_json(row: dict) -> dict:
    """A row with each Stat as {mean, sd, values}: for ``tables/table_rows.json``."""
    out = {}
    for key, value in row.items():
        if isinstance(value, Stat):
            out[key] = {"mean": value.mean if value.n else None,
                        "sd": value.sd if value.n > 1 else None, "values": list(value.values)}
        else:
            out[key] = value if not (isinstance(value, float) and math.isnan(value)) else None
    return out

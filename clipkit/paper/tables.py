"""The report's tables and the numbers behind its sentences, from the sweeps' Datasets.

Every function reads the result schema (``clipkit.experiments.evaluate``,
``clipkit.experiments.lambda_path``) and returns Markdown or plain numbers; nothing here is
typed by hand except the authors' published table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import xarray as xr

from clipkit.paper.rows import CERTIFIED_EPS, run_of

__all__ = [
    "classification_table",
    "curve_table",
    "regression_table",
    "theory_findings",
    "theory_tables",
    "tradeoff_table",
]



def first_seed(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(seed=0) if "seed" in ds.dims else ds


def reduce_to(ds: xr.Dataset, keep: Sequence[str]) -> xr.Dataset:
    """``ds`` with every dim not in ``keep`` reduced to its first entry (seed: the mean)."""
    for dim in list(ds.dims):
        if dim in keep:
            continue
        ds = ds.mean(dim, keep_attrs=True) if dim == "seed" else ds.isel({dim: 0})
    return ds


def mean_seed(da: xr.DataArray) -> xr.DataArray:
    return da.mean("seed") if "seed" in da.dims else da


def pct(v: float) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


def num(v: float, digits: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def accuracy_at(da: xr.DataArray, attack: str, eps: float) -> float:
    """Accuracy under ``attack`` at the ε of its grid nearest to ``eps``."""
    sub = da.sel(attack=attack).dropna("eps", how="all")
    if sub.sizes["eps"] == 0:
        return float("nan")
    return float(sub.sel(eps=eps, method="nearest"))


def nearest_eps(da: xr.DataArray, attack: str, eps: float) -> float:
    sub = da.sel(attack=attack).dropna("eps", how="all")
    return float(sub.eps.sel(eps=eps, method="nearest"))


def classification_table(rows: list[dict], dataset: str) -> str:
    """One line per configuration of ``dataset``: mean ± sd over the seeds of every number.

    Robust accuracies at the ε the authors report: Gaussian noise at their σ = 1 and at
    σ = 0.3 of our grid, PGD-ℓ2 at ε = 2 under their attack and under clipkit's; the
    Lipschitz bracket (seed means); the certified ℓ2 accuracy at ε = 0.1
    (:data:`~clipkit.paper.rows.CERTIFIED_EPS`) when the results have it.
    """
    from clipkit.paper.verdicts import AUTHORS_MNIST

    mine = [r for r in rows if r["dataset"] == dataset]
    certified = any(r["certified"].n for r in mine)
    header = ["setting", "regularization", "seeds", "λ", "tested epoch, per seed", "clean %",
              "noise σ=1 %", "noise σ=0.3 %", "PGD-ℓ2 ε=2, authors' attack %",
              "PGD-ℓ2 ε=2, clipkit's %",
              *([f"certified ε={CERTIFIED_EPS:g} %"] if certified else []),
              "Lip bracket, seeds' mean", "authors' clean / noise / PGD-ℓ2 %"]
    out = []
    for r in mine:
        authors = AUTHORS_MNIST.get(r["row"]) if dataset == "mnist" and r["last_activation"] \
            else None
        lam_end = r["lam_end"].mean
        lam = num(r["lam"]) if not math.isfinite(lam_end) or math.isclose(lam_end, r["lam"]) \
            else f"{num(r['lam'])} → {num(lam_end)}"
        out.append([
            r["setting"], r["row"], str(r["seeds"]), lam,
            ", ".join(f"{v:g}" for v in r["epoch"].values) or "–", r["clean"].pct(),
            _eps_note(r, "noise_1", 1.0), _eps_note(r, "noise_03", 0.3),
            _eps_note(r, "pgd_authors", 2.0), _eps_note(r, "pgd", 2.0),
            *([_eps_note(r, "certified", CERTIFIED_EPS)] if certified else []),
            f"[{r['lip_lower'].num()}, {r['lip_upper'].num()}]",
            " / ".join(f"{100 * v:.1f}" for v in authors) if authors else "",
        ])
    return markdown(header, out)


def _eps_note(row: dict, key: str, eps: float) -> str:
    """The accuracy, with the ε actually used when the grid lacked ``eps``."""
    text = row[key].pct()
    found = row[f"{key}_eps"]
    if math.isfinite(found) and found != eps:
        text += f" (at {found:g})"
    return text


#: the learning-curve table's quantities: history variable -> its name in the table
CURVE_ROWS = {
    "test_acc": "clean test",
    "curve_pgd_l2_authors": "PGD-ℓ2 ε=2, authors'",
    "curve_pgd_l2": "PGD-ℓ2 ε=2, clipkit's",
    "lam_epoch": "λ",
}


def curve_table(d: xr.Dataset, methods: Sequence[str] = ("standard", "clip"),
                labels: Sequence[str] = ("none", "CLIP"), columns: int = 12) -> str:
    """The learning curves' numbers (seed means, %): one line per setting, method and
    quantity, one column per measured epoch (at most ``columns``, spread evenly)."""
    measured = d["curve_pgd_l2"] if "curve_pgd_l2" in d else d["test_acc"]
    other = [x for x in measured.dims if x != "epoch"]
    ok = measured.notnull().any(other) if other else measured.notnull()
    epochs = d.epoch.values[ok.values]
    if len(epochs) > columns:
        epochs = epochs[np.unique(np.round(np.linspace(0, len(epochs) - 1, columns)).astype(int))]
    lasts = sorted(d.last_activation.values, reverse=True) if "last_activation" in d.dims \
        else [None]  # the published setting first
    out = []
    for last in lasts:
        e = d if last is None else d.sel(last_activation=last)
        setting = "published" if last else "corrected"
        for method, label in zip(methods, labels, strict=True):
            if method not in e.method.values:
                continue
            m = e.sel({"method": method})
            m = run_of(m)
            for var, name in CURVE_ROWS.items():
                if var not in m:
                    continue
                v = mean_seed(m[var]).sel(epoch=epochs).values
                cells = [num(x, 2) if var == "lam_epoch" else pct(x) for x in v]
                out.append([setting, label, name, *cells])
    return markdown(["setting", "regularization", "epoch →", *map(str, epochs)], out)


def theory_tables(t: xr.Dataset) -> tuple[str, str]:
    """The λ-path table (exact vs CLIP network per p and λ) and the weight-decay table."""
    spread = float(t.label_spread)
    rows = []
    for p in t.power.values:
        d = t.sel(power=p)
        for i in range(d.sizes["lam_rel"]):
            rows.append([
                f"{int(p)}", f"{float(d.lam_rel[i]):g}", num(float(d.lam[i])),
                num(float(d.exact_lip[i])), num(float(d.clip_lip[i])),
                num(float(d.rate_bound[i])),
                f"{100 * float(d.exact_dist[i]) / spread:.1f}",
                f"{100 * float(d.clip_dist[i]) / spread:.1f}",
            ])
    # distance = sup over x in [−1, 1] of |f(x) − ȳ| (no "|" in a Markdown table)
    table = markdown(["p", "λ/λ*", "λ", "Lip exact", "Lip CLIP net", "rate bound",
                      "exact: distance to ȳ, % of spread", "CLIP: distance to ȳ, % of spread"],
                     rows)
    wd_rows = [[num(float(t.wd_lam[i])), f"{100 * float(t.wd_dist[i]) / spread:.1f}",
                f"{100 * float(t.wd_dist_zero[i]) / spread:.1f}", num(float(t.wd_lip[i]))]
               for i in range(t.sizes["wd_lam"])]
    wd_table = markdown(["λ (weight decay)", "distance to ȳ, % of spread",
                         "distance to 0, % of spread", "Lip"], wd_rows)
    return table, wd_table


#: the tolerances of the theory findings, as fractions of the label spread
EXACT_TOL = 1e-3  # "the exact minimiser is ȳ" (the solver's accuracy)
#: "the exact minimiser is not constant": Lip(f_λ) above this fraction of L* (far below
#: λ*/(2λ), the p = 2 minimiser's constant for large λ, on any grid of a run)
LIP_TOL = 1e-9
NETWORK_TOL = 0.05  # "a trained network is at ȳ (or at 0)"


def theory_findings(t: xr.Dataset) -> dict[str, bool | float]:
    """What the theory run shows, each a yes/no computed from its numbers.

    ``exact_constant_above``: the exact minimiser is ȳ (within ``EXACT_TOL`` of the spread)
    for every λ ≥ λ* (p = 1); ``exact_moves_below``: it is not, for every λ < λ*;
    ``rate_holds``: Lip(f_λ) ≤ the rate bound everywhere; ``p2_never_constant``: with
    p = 2 the exact minimiser is never ȳ (its Lip(f_λ) > ``LIP_TOL``·L*);
    ``clip_constant_above``: the CLIP networks are within ``NETWORK_TOL`` of ȳ for
    λ ≥ 2λ*; ``wd_to_zero``: at the largest weight-decay λ the network is within
    ``NETWORK_TOL`` of 0 and not of ȳ. ``worst_above`` is the largest distance to ȳ for
    λ ≥ 2λ* (exact or CLIP, p = 1), as a fraction of the spread.
    """
    spread = float(t.label_spread)
    out: dict[str, bool | float] = {}
    if 1 in t.power.values:
        p1 = t.sel(power=1)
        above, below = p1.lam_rel >= 1, p1.lam_rel < 1
        out["exact_constant_above"] = bool((p1.exact_dist.where(above, drop=True)
                                            <= EXACT_TOL * spread).all())
        out["exact_moves_below"] = bool((p1.exact_dist.where(below, drop=True)
                                         > EXACT_TOL * spread).all())
        far = p1.where(p1.lam_rel >= 2, drop=True)
        if far.sizes["lam_rel"]:
            out["clip_constant_above"] = bool((far.clip_dist <= NETWORK_TOL * spread).all())
            out["worst_above"] = max(float(far.exact_dist.max()),
                                     float(far.clip_dist.max())) / spread
    if 2 in t.power.values:
        # not the distance against EXACT_TOL: with p = 2 it shrinks like 1/λ and falls under
        # any fixed tolerance for λ large enough, while Lip(f_λ) ≈ λ*/(2λ) stays > 0
        out["p2_never_constant"] = bool((t.sel(power=2).exact_lip
                                         > LIP_TOL * t.L_star).all())
    out["rate_holds"] = bool((t.exact_lip <= t.rate_bound * (1 + 1e-6) + 1e-6).all())
    big = t.isel(wd_lam=-1)
    out["wd_to_zero"] = bool(float(big.wd_dist_zero) <= NETWORK_TOL * spread
                             and float(big.wd_dist) > NETWORK_TOL * spread)
    return out


def regression_table(rg: xr.Dataset) -> str:
    """Per method: λ, test errors, the Lipschitz bracket and the exact constant (seed means)."""
    rows = []
    for m in rg.method.values:
        d = rg.sel({"method": m})
        rows.append([str(m), num(float(mean_seed(d.lam))),
                     f"{float(mean_seed(d.test_mse)):.4f}",
                     f"{float(mean_seed(d.test_mse_target)):.4f}",
                     f"[{num(float(mean_seed(d.lip_lower)))}, "
                     f"{num(float(mean_seed(d.lip_upper)))}]",
                     num(float(mean_seed(d.lip_exact)))])
    return markdown(["method", "λ", "test MSE (noisy labels)", "MSE to the target",
                     "Lip bracket (on ℝ)", "exact Lip on [−1, 1]"], rows)


def tradeoff_table(d: xr.Dataset) -> str:
    """Per λ: clean accuracy, accuracy under each attack at its paper ε, the bracket."""
    rows = []
    for lv in d.lam.values:
        e = d.sel(lam=lv)
        ra = e.robust_acc
        rows.append([num(float(lv)), pct(float(e.clean_acc)),
                     pct(accuracy_at(ra, "noise", float(ra.eps.max()))),
                     pct(accuracy_at(ra, "fgsm", 0.1)), pct(accuracy_at(ra, "pgd_l2", 2.0)),
                     pct(accuracy_at(ra, "pgd_linf", 0.1)),
                     f"[{num(float(e.lip_lower))}, {num(float(e.lip_upper))}]"])
    return markdown(["λ", "clean %", "noise % (largest σ)", "FGSM ε=0.1 %", "PGD-ℓ2 ε=2 %",
                     "PGD-ℓ∞ ε=0.1 %", "Lip bracket"], rows)

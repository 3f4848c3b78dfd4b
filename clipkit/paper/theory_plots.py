"""The theory figures (``lambda_to_constant.ipynb``): fits, Lipschitz constant, distance to
the constant, and the two powers p against λ/λ*. ``clipkit.paper.plots`` re-exports them."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

__all__ = ["theory_distance", "theory_fits", "theory_lipschitz", "theory_power"]

_FLOOR = 1e-4  # Lipschitz constants below this are drawn at it (log axes have no 0)


def _pick(values: Sequence[float], k: int) -> list[int]:
    """Indices of up to ``k`` values spread evenly over a grid."""
    n = len(values)
    if n <= k:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


def _power(ds: xr.Dataset, power: int) -> xr.Dataset:
    if "power" in ds.dims:
        if power not in ds.power.values:
            raise ValueError(f"no power {power} in the result (it has {list(ds.power.values)})")
        return ds.sel(power=power)
    return ds


def theory_fits(ds: xr.Dataset, power: int = 1, n_lam: int = 4) -> plt.Figure:
    """Fits over x at several λ: exact minimisers, CLIP networks, weight-regularized networks.

    The label mean ȳ (CLIP's limit) and 0 (weight regularization's limit) are drawn.
    """
    d = _power(ds, power)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    xg = d.x_grid.values
    ymean = float(d.label_mean)
    colors = plt.cm.viridis(np.linspace(0, 0.9, n_lam))
    for ax, var, title in ((axes[0], "exact_f", "exact minimiser"),
                           (axes[1], "clip_f", f"CLIP network (p = {power})")):
        for c, i in zip(colors, _pick(d.lam_rel.values, n_lam), strict=False):
            rel = float(d.lam_rel[i])
            ax.plot(xg, d[var].isel(lam_rel=i), color=c, label=f"λ = {rel:g} λ*")
        ax.set_title(title)
    # every weight-decay λ (the grid is short): a pick could leave out the one λ whose fit
    # passes near ȳ on its way to 0
    wd_colors = plt.cm.viridis(np.linspace(0, 0.9, d.sizes["wd_lam"]))
    for i, c in enumerate(wd_colors):
        axes[2].plot(xg, d.wd_f.isel(wd_lam=i), color=c, label=f"λ = {float(d.wd_lam[i]):g}")
    axes[2].set_title("weight regularization λ‖θ‖²")
    for ax in axes:
        ax.scatter(d.x, d.y, s=8, color="0.6", zorder=0, label="data")
        ax.axhline(ymean, color="C3", ls="--", lw=1, label="label mean ȳ")
        ax.axhline(0.0, color="k", ls=":", lw=0.8)
        ax.set_xlabel("x")
        # under its panel: inside, the legend covered the data and the fits' right end
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3,
                  frameon=False)
    axes[0].set_ylabel("f(x)")
    fig.suptitle("As λ grows, CLIP tends to the label mean; weight regularization to 0")
    fig.set_figheight(4.9)
    fig.tight_layout()
    return fig


def theory_lipschitz(ds: xr.Dataset, power: int = 1) -> plt.Figure:
    """Lip(f_λ) against λ (log-log) with the rate bound, λ* and L* marked."""
    d = _power(ds, power)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    lam = d.lam.values
    floored = [d.exact_lip, d.clip_lip, d.rate_bound_sharp]  # the values drawn at _FLOOR
    ax.loglog(lam, np.maximum(d.exact_lip, _FLOOR), "o-", label="exact minimiser")
    ax.loglog(lam, np.maximum(d.clip_lip, _FLOOR), "s--", label="CLIP network (exact Lip)")
    bound = "E(ȳ)/λ" if power == 1 else "sqrt(E(ȳ)/λ)"
    # a bound on the exact minimiser: a trained network need not meet it
    ax.loglog(lam, d.rate_bound, "k-", lw=1, label=f"rate bound {bound} (exact minimiser)")
    ax.loglog(lam, np.maximum(d.rate_bound_sharp, _FLOOR), "k:", lw=1,
              label="(E(ȳ) − E(f_λ))/λ, exact f_λ" if power == 1 else "sharp bound, exact f_λ")
    ax.axhline(float(d.L_star), color="C2", lw=0.8, ls="-.", label="L* (interpolation)")
    if power == 1:
        ax.axvline(float(d.lam_star), color="C3", lw=1, ls="--", label="λ*")
    ax.set_ylim(bottom=_FLOOR * 0.5)
    ax.set_xlabel("λ")
    ax.set_ylabel("Lip(f_λ)")
    ax.set_title(f"Lipschitz constant against λ (p = {power}){_floor_note(floored)}",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def theory_distance(ds: xr.Dataset, power: int = 1) -> plt.Figure:
    """Distance sup|f_λ − ȳ| / label spread against λ/λ*: the collapse at λ*; and weight
    regularization, whose network approaches 0 rather than ȳ."""
    d = _power(ds, power)
    spread = float(d.label_spread)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    rel = d.lam_rel.values
    ax.semilogx(rel, d.exact_dist / spread, "o-", label="exact minimiser")
    ax.semilogx(rel, d.clip_dist / spread, "s--", label="CLIP network")
    # λ* is the threshold of p = 1; with p = 2 there is none, and λ/λ* is a unit only
    ax.axvline(1.0, color="C3", ls="--", lw=1,
               label="λ = λ* (the threshold)" if power == 1 else "λ = λ* of p = 1 (no threshold"
                                                                 " for p = 2)")
    ax.axhline(0.05, color="0.5", ls=":", lw=1, label="5 % of the spread")
    ax.set_xlabel("λ / λ*" if power == 1 else "λ / λ*  (λ* of p = 1)")
    ax.set_ylabel("sup |f_λ(x) − ȳ| / spread(y)")
    ax.set_title(f"distance to the optimal constant (p = {power})")
    ax.legend(fontsize=8)
    bx.semilogx(d.wd_lam, d.wd_dist / spread, "o-", label="to ȳ (label mean)")
    bx.semilogx(d.wd_lam, d.wd_dist_zero / spread, "s--", label="to 0 (zero network)")
    bx.set_xlabel("λ (weight regularization λ‖θ‖²)")
    bx.set_ylabel("sup distance / spread(y)")
    bx.set_title("weight regularization tends to the zero network")
    bx.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _floor_note(drawn: list[xr.DataArray]) -> str:
    """A log axis cannot show 0 (the constant is reached): values below _FLOOR are drawn at
    it, and the title says so only where some value is."""
    return f"; values < {_FLOOR:g} drawn at it" if any(bool((v < _FLOOR).any())
                                                       for v in drawn) else ""


def theory_power(ds: xr.Dataset) -> plt.Figure:
    """Power 1 against power 2: Lip(f_λ) and the distance to ȳ against λ/λ*."""
    if "power" not in ds.dims or ds.sizes["power"] < 2:
        raise ValueError("theory_power needs a result with powers 1 and 2")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    rel = ds.lam_rel.values
    spread = float(ds.label_spread)
    for i, p in enumerate(ds.power.values):
        d = ds.sel(power=p)
        ax.loglog(rel, np.maximum(d.exact_lip, _FLOOR), "o-", color=f"C{i}", label=f"exact, p={p}")
        ax.loglog(rel, np.maximum(d.clip_lip, _FLOOR), "s--", color=f"C{i}", label=f"CLIP, p={p}")
        ax.loglog(rel, d.rate_bound, ":", color=f"C{i}", lw=1,
                  label=f"rate bound, p={p} (exact minimiser)")
        bx.semilogx(rel, d.exact_dist / spread, "o-", color=f"C{i}", label=f"exact, p={p}")
        bx.semilogx(rel, d.clip_dist / spread, "s--", color=f"C{i}", label=f"CLIP, p={p}")
    for a in (ax, bx):
        a.axvline(1.0, color="C3", ls="--", lw=1, label="λ = λ* (p = 1)")
        a.set_xlabel("λ / λ*  (λ* of p = 1)")
        a.legend(fontsize=7)
    ax.set_ylim(bottom=_FLOOR * 0.5)
    ax.set_ylabel("Lip(f_λ)")
    note = _floor_note([ds.exact_lip, ds.clip_lip])
    ax.set_title(f"p = 1 reaches the constant at λ*; p = 2 never does: Lip ≈ λ*/(2λ){note}",
                 fontsize=9)
    bx.set_ylabel("sup |f_λ − ȳ| / spread(y)")
    bx.set_title("distance to the optimal constant", fontsize=9)
    fig.tight_layout()
    return fig

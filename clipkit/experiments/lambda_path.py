"""The λ → constant experiment: exact minimisers and trained networks along a λ grid.

On 1-D regression data (x, y), with ȳ the label mean (the optimal constant):

* :func:`constants` — ȳ, E(ȳ) = Var(y), the label spread, the threshold λ* and L*;
* :func:`exact_path` — the exact function-space minimiser of E + λ·Lip^p for each (p, λ),
  extended to a grid: ``exact_f``, ``exact_lip``, ``exact_fit``, ``exact_dist``;
* :func:`network_path` — networks trained along the grid (a ``fit_path`` result):
  ``{prefix}_f``, ``{prefix}_fit``, ``{prefix}_lip`` (exact, 1-D ReLU) and ``{prefix}_dist``;
* :func:`rate_bounds` — E(ȳ)/λ and the sharper (E(ȳ) − E(f_λ))/λ (square roots for p = 2);
* :func:`by_relative_lambda` — the λ dimension in units of λ*: ``lam_rel``.

``*_dist`` is sup over the grid of |f − ȳ|. ``notebooks/lambda_to_constant.ipynb`` puts
them together into one Dataset over (power, lam_rel), with the absolute λ a variable
``lam`` (lam_rel); the statements they check are in ``docs/mathematics.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from clipkit.analysis import lipschitz, theory
from clipkit.train.path import model_at

__all__ = ["by_relative_lambda", "constants", "exact_path", "network_path", "rate_bounds"]


def constants(x: Tensor, y: Tensor) -> xr.Dataset:
    """ȳ, E(ȳ), the label spread, λ* (p = 1) and L* of the data, as scalar variables."""
    const = theory.optimal_constant(y)
    return xr.Dataset({
        "x": ("sample", x[:, 0].double().numpy()),
        "y": ("sample", y[:, 0].double().numpy()),
        "label_mean": ((), float(const.c[0])),
        "label_spread": ((), float(y.max() - y.min())),
        "E_const": ((), const.value, {"description": "E(ȳ) = Var(y)"}),
        "lam_star": ((), theory.threshold(x, y),
                     {"description": "threshold λ* (p = 1): ȳ is optimal iff λ ≥ λ*"}),
        "L_star": ((), theory.min_interpolation_constant(x, y),
                   {"description": "least Lipschitz constant of an interpolant"}),
    }, coords={"sample": np.arange(len(x))})


def _sup_dist(values: np.ndarray, c: float) -> float:
    return float(np.max(np.abs(np.asarray(values) - c)))


def exact_path(x: Tensor, y: Tensor, lams: Sequence[float], powers: Sequence[int],
               x_grid: Tensor) -> xr.Dataset:
    """The exact minimiser (``ck.theory.solve``) for each power p and λ, on the grid."""
    c = float(theory.optimal_constant(y).c[0])
    f = np.zeros((len(powers), len(lams), len(x_grid)))
    lip, fit, dist = (np.zeros((len(powers), len(lams))) for _ in range(3))
    for a, p in enumerate(powers):
        for b, lam in enumerate(lams):
            sol = theory.solve(x, y, lam, power=p)
            f[a, b] = theory.extend(sol, None, x_grid)[:, 0]
            lip[a, b], fit[a, b], dist[a, b] = sol.lip, sol.fit, _sup_dist(f[a, b], c)
    dims = ("power", "lam")
    return xr.Dataset({
        "exact_f": ((*dims, "x_grid"), f, {"description": "exact minimiser, extended to the grid"}),
        "exact_lip": (dims, lip, {"description": "Lip of the exact minimiser's values"}),
        "exact_fit": (dims, fit),
        "exact_dist": (dims, dist, {"description": "sup over the grid of |f(x) − ȳ|"}),
    }, coords={"power": list(powers), "lam": [float(v) for v in lams],
               "x_grid": x_grid[:, 0].double().numpy()})


def network_path(path: xr.Dataset, model_fn: Callable[[], nn.Module], x: Tensor, y: Tensor,
                 x_grid: Tensor, *, prefix: str, lam_dim: str = "lam",
                 seed: int = 0) -> xr.Dataset:
    """The networks a ``fit_path`` trained, one per λ: values on the grid, fit, exact Lip, and
    the distance to ȳ (``{prefix}_dist``) and to 0 (``{prefix}_dist_zero``)."""
    c = float(theory.optimal_constant(y).c[0])
    lams = [float(v) for v in path.lam.values]
    f = np.zeros((len(lams), len(x_grid)))
    fit, lip, dist, dist0 = (np.zeros(len(lams)) for _ in range(4))
    interval = (float(x_grid.min()), float(x_grid.max()))
    for b, lam in enumerate(lams):
        model = model_at(path, model_fn, lam=lam, seed=seed)
        with torch.no_grad():
            f[b] = model(x_grid.to(x.dtype)).double()[:, 0].numpy()
            fit[b] = float(((model(x) - y) ** 2).mean())
        lip[b] = lipschitz.exact(model, interval).value  # piecewise linear: exact
        dist[b], dist0[b] = _sup_dist(f[b], c), _sup_dist(f[b], 0.0)
    return xr.Dataset({
        f"{prefix}_f": ((lam_dim, "x_grid"), f, {"description": "trained network on the grid"}),
        f"{prefix}_fit": (lam_dim, fit),
        f"{prefix}_lip": (lam_dim, lip, {"description": "exact Lipschitz constant on the grid's "
                                                       "interval (piecewise-linear network)"}),
        f"{prefix}_dist": (lam_dim, dist, {"description": "sup over the grid of |f(x) − ȳ|"}),
        f"{prefix}_dist_zero": (lam_dim, dist0, {"description": "sup over the grid of |f(x)|"}),
        f"{prefix}_loss": ((lam_dim, "epoch"), path["loss"].sel(seed=seed).values,
                           {"description": "training loss per epoch"}),
    }, coords={lam_dim: lams, "x_grid": x_grid[:, 0].double().numpy(),
               "epoch": path.epoch.values})


def rate_bounds(consts: xr.Dataset, exact: xr.Dataset) -> xr.Dataset:
    """``rate_bound`` = E(ȳ)/λ and ``rate_bound_sharp`` = (E(ȳ) − E(f_λ))/λ with the exact
    f_λ, over (power, lam) (square roots for p = 2: ``ck.theory.rate_bound``)."""
    e_const = float(consts.E_const)
    powers, lams = list(exact.power.values), list(exact.lam.values)
    plain = [[theory.rate_bound(e_const, 0.0, lam, p) for lam in lams] for p in powers]
    sharp = [[theory.rate_bound(e_const, float(exact.exact_fit.sel(power=p, lam=lam)), lam, p)
              for lam in lams] for p in powers]
    dims = ("power", "lam")
    return xr.Dataset({
        "rate_bound": (dims, np.array(plain), {"description": "E(ȳ)/λ (p=1), sqrt(E(ȳ)/λ) (p=2)"}),
        "rate_bound_sharp": (dims, np.array(sharp), {
            "description": "(E(ȳ) − E(f_λ))/λ with the exact f_λ (p=1; sqrt for p=2)"}),
    }, coords={"power": powers, "lam": lams})


def by_relative_lambda(ds: xr.Dataset, lam_factors: Sequence[float]) -> xr.Dataset:
    """``ds`` over ``lam_rel`` = λ/λ* instead of the absolute ``lam``, which becomes a
    variable (lam_rel).

    λ* depends on the data, so the absolute grid differs between runs of other data (noise,
    n, data_seed) while the relative one is what the run was given: a sweep over the data
    combines along ``lam_rel`` without the NaN an outer join of different λ would leave.
    """
    if ds.sizes.get("lam") != len(lam_factors):
        raise ValueError(f"by_relative_lambda: {len(lam_factors)} factors for a λ dimension of "
                         f"{ds.sizes.get('lam', 0)}")
    rel = xr.DataArray([float(f) for f in lam_factors], dims="lam",
                       attrs={"description": "λ / λ*"})
    out = ds.assign_coords(lam_rel=rel).swap_dims(lam="lam_rel").reset_coords("lam")
    out["lam"].attrs["description"] = "λ = lam_rel · λ* (the penalty's weight)"
    return out

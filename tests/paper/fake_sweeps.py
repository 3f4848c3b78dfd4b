"""Run Datasets with the variables the paper's notebooks write, filled with seeded random
numbers: sweeps for the explorer's tests, without training anything."""

from __future__ import annotations

import numpy as np
import xarray as xr

from clipkit.experiments import results

ATTACKS = {"noise": [0.0, 0.5, 1.0], "pgd_l2": [0.0, 1.0, 2.0]}
EPS = [0.0, 0.5, 1.0, 2.0]


def classification_run(method: str, last: bool, lams: list[float], seed: int = 0,
                       swept: bool = True) -> xr.Dataset:
    """One run of classification.ipynb; ``swept``: method and setting are the sweep's grid."""
    rng = np.random.default_rng([len(method), int(last), seed])
    robust = np.full((len(lams), len(ATTACKS), len(EPS)), np.nan)
    for i, grid in enumerate(ATTACKS.values()):
        for e in grid:
            robust[:, i, EPS.index(e)] = rng.uniform(0, 1, len(lams))
    ds = xr.Dataset(
        {"test_acc": (("lam", "epoch"), rng.uniform(0, 1, (len(lams), 3))),
         "clean_acc": ("lam", rng.uniform(0.5, 1, len(lams))),
         "robust_acc": (("lam", "attack", "eps"), robust),
         "lip_lower": ("lam", rng.uniform(1, 2, len(lams))),
         "lip_upper": ("lam", rng.uniform(2, 3, len(lams)))},
        coords={"lam": lams, "epoch": [0, 1, 2], "attack": list(ATTACKS), "eps": EPS},
    )
    # certified ℓ2 accuracy at the PGD-ℓ2 radii, below the attack's (as it must be)
    pgd = ds.robust_acc.sel(attack="pgd_l2", drop=True)
    ds["certified_acc"] = pgd * rng.uniform(0, 1, len(EPS))
    setting = {"method": method, "last_activation": last}
    return results.stamp(ds, setting if swept else {}).assign_coords(
        dataset="fashion-mnist", seed=seed, **({} if swept else setting))


def theory_run(seed: int) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    xg, rel, wd, power = np.linspace(-1, 1, 11), [0.5, 1.0, 2.0], [0.1, 1.0], [1, 2]
    pl = (("power", "lam_rel"), rng.uniform(0.1, 1, (2, 3)))
    ds = xr.Dataset(
        {"x": ("sample", rng.uniform(-1, 1, 5)), "y": ("sample", rng.normal(size=5)),
         "label_mean": 0.3, "label_spread": 2.0, "lam_star": 1.0, "L_star": 5.0,
         "lam": ("lam_rel", rel),  # λ* = 1
         "exact_f": (("power", "lam_rel", "x_grid"), rng.normal(size=(2, 3, 11))),
         "clip_f": (("power", "lam_rel", "x_grid"), rng.normal(size=(2, 3, 11))),
         "wd_f": (("wd_lam", "x_grid"), rng.normal(size=(2, 11))),
         "exact_lip": pl, "clip_lip": pl, "rate_bound": pl, "rate_bound_sharp": pl,
         "exact_dist": pl, "clip_dist": pl,
         "wd_dist": ("wd_lam", [1.0, 0.5]), "wd_dist_zero": ("wd_lam", [1.0, 0.1])},
        coords={"x_grid": xg, "lam_rel": rel, "wd_lam": wd, "power": power})
    return results.stamp(ds, {"seed": seed})


def regression_run(seed: int) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    methods = ["standard", "clip"]
    ds = xr.Dataset(
        {"f": (("method", "x_grid"), rng.normal(size=(2, 11))),
         "test_mse": ("method", [0.2, 0.1]), "test_mse_target": ("method", [0.1, 0.05]),
         "lip_lower": ("method", [3.0, 1.0]), "lip_upper": ("method", [4.0, 1.5]),
         "x": ("sample", rng.uniform(-1, 1, 5)), "y": ("sample", rng.normal(size=5)),
         "target": ("x_grid", np.zeros(11)), "label_mean": 0.1},
        coords={"method": methods, "x_grid": np.linspace(-1, 1, 11)})
    return results.stamp(ds, {"seed": seed})

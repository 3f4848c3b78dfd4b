"""clipkit.experiments.lambda_path: the λ → constant result over λ/λ*."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import clipkit as ck
from clipkit import results
from clipkit.experiments import lambda_path


def theory_run(noise: float, factors: list[float]) -> tuple:
    """The exact part of a lambda_to_constant run (no training) on data of this noise."""
    x, y = ck.data.regression(n=20, noise=noise, seed=0)
    consts = lambda_path.constants(x, y)
    lams = [f * float(consts.lam_star) for f in factors]
    grid = torch.linspace(-1, 1, 21, dtype=torch.float64)[:, None]
    exact = lambda_path.exact_path(x, y, lams, [1], grid)
    ds = lambda_path.by_relative_lambda(consts.merge(exact), factors)
    return results.stamp(ds, {"noise": noise}), lams


def test_runs_on_other_data_combine_along_the_relative_lambda_without_holes():
    factors = [0.5, 1.0, 2.0]
    (low, lams_low), (high, lams_high) = theory_run(0.1, factors), theory_run(0.5, factors)
    assert not np.allclose(lams_low, lams_high)  # λ* depends on the data
    sweep = results.combine([low, high])
    assert dict(sweep.sizes)["lam_rel"] == 3 and list(sweep.lam_rel.values) == factors
    assert sweep.exact_dist.dims == ("noise", "power", "lam_rel")
    assert not bool(sweep.exact_dist.isnull().any())
    np.testing.assert_allclose(sweep.lam.sel(noise=0.5), lams_high)
    np.testing.assert_allclose(sweep.lam / sweep.lam_star, sweep.lam_rel.broadcast_like(sweep.lam))
    # the exact minimiser is ȳ from λ* on, for either noise
    spread = sweep.label_spread
    assert bool((sweep.exact_dist.sel(lam_rel=2.0) < 1e-3 * spread).all())
    assert bool((sweep.exact_dist.sel(lam_rel=0.5) > 1e-3 * spread).all())


def test_by_relative_lambda_wants_one_factor_per_lambda():
    low, _ = theory_run(0.1, [0.5, 1.0])
    with pytest.raises(ValueError, match="3 factors for a λ dimension of 0"):
        lambda_path.by_relative_lambda(low, [0.5, 1.0, 2.0])


def test_the_report_finds_power_two_never_constant_however_large_lambda():
    from clipkit.paper import tables

    x, y = ck.data.regression(n=60, noise=0.1, seed=0)
    consts = lambda_path.constants(x, y)
    factors = [0.5, 2.0, 200.0]
    lams = [f * float(consts.lam_star) for f in factors]
    grid = torch.linspace(-1, 1, 101, dtype=torch.float64)[:, None]
    exact = lambda_path.exact_path(x, y, lams, [1, 2], grid)
    ds = lambda_path.by_relative_lambda(
        consts.merge(exact).merge(lambda_path.rate_bounds(consts, exact)), factors)
    ds = ds.assign(clip_dist=ds.exact_dist, wd_dist=("wd_lam", [1.0]),
                   wd_dist_zero=("wd_lam", [0.0])).assign_coords(wd_lam=[10.0])
    p2 = ds.exact_dist.sel(power=2, lam_rel=200.0)
    assert 0 < float(p2) < tables.EXACT_TOL * float(ds.label_spread)  # under the ȳ tolerance
    found = tables.theory_findings(ds)
    assert found["p2_never_constant"] and found["exact_constant_above"]
    assert found["exact_moves_below"] and found["rate_holds"]

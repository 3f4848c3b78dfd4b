"""The 1-D regression experiment (``notebooks/regression.ipynb``): evaluate each trained
network, and put the methods together into one result Dataset.

:func:`regression_result` of one :func:`regression_fit` per method: over ``method``:
``f`` (method, x_grid) the network on a grid, ``train_mse``, ``test_mse`` (fresh noisy
labels), ``test_mse_target`` (against the noise-free target), ``lip_lower``, ``lip_upper``
(bracket), ``lip_exact`` (exact on the grid's interval, for 1-D ReLU networks), ``loss``
(method, epoch), ``lam``, ``train_seconds``, ``diverged`` (the epoch in which a method
trained with ``on_nonfinite="record"`` diverged, its evaluation then NaN; 0 where it
trained through); and the data ``x``, ``y`` (sample), ``target`` (x_grid), ``label_mean``.
``ck.evaluate`` re-exports the three functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from clipkit.analysis import lipschitz
from clipkit.core.utils import device_dtype
from clipkit.train.history import DIVERGED, diverged_epoch
from clipkit.train.protocol import Method

__all__ = ["evaluate_regression", "regression_fit", "regression_result"]

_REGRESSION_DIVERGED = f"{DIVERGED}; the method's evaluation is then NaN"


def evaluate_regression(model: nn.Module, train: tuple[Tensor, Tensor],
                        test: tuple[Tensor, Tensor], x_grid: Tensor,
                        target: Callable[[Tensor], Tensor], *, seed: int = 0) -> xr.Dataset:
    """A 1-D regression network: its values on ``x_grid``, errors, Lipschitz bracket and
    exact constant on the grid's interval. ``x_grid``: (G, 1); ``train``, ``test``: (x, y)
    with x and y of shape (N, 1)."""
    for name, (x, y) in (("train", train), ("test", test)):
        if x.dim() != 2 or x.shape[1] != 1 or tuple(y.shape) != tuple(x.shape):
            raise ValueError(f"evaluate_regression: {name} must be (x, y) of shape (N, 1) each, "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
    if x_grid.dim() != 2 or x_grid.shape[1] != 1:
        raise ValueError(f"evaluate_regression: x_grid must have shape (G, 1), got "
                         f"{tuple(x_grid.shape)} (e.g. torch.linspace(-1, 1, G)[:, None])")
    model.eval()
    dev = device_dtype(model)[0]

    def out(x: Tensor) -> Tensor:  # the model's values at x, on the CPU
        return model(x.to(dev)).cpu()

    with torch.no_grad():
        f = out(x_grid.to(train[0].dtype))[:, 0].double().numpy()
        train_mse = float(((out(train[0]) - train[1]) ** 2).mean())
        test_mse = float(((out(test[0]) - test[1]) ** 2).mean())
        xt = test[0].double()
        target_mse = float(((out(test[0]).double() - target(xt)) ** 2).mean())
    br = lipschitz.bracket(model, train[0], seed=seed)
    interval = (float(x_grid.min()), float(x_grid.max()))
    return xr.Dataset({
        "f": ("x_grid", f, {"description": "the trained network on the grid"}),
        "train_mse": ((), train_mse),
        "test_mse": ((), test_mse, {"description": "MSE on fresh noisy test labels"}),
        "test_mse_target": ((), target_mse,
                            {"description": "MSE against the noise-free target"}),
        "lip_lower": ((), br.lower, {"description": "ck.lipschitz.bracket lower bound of the "
                                                   "global constant (on ℝ; it may exceed "
                                                   "lip_exact, which is on the grid's interval)"}),
        "lip_upper": ((), br.upper, {"description": "ck.lipschitz.bracket upper bound of the "
                                                   "global constant (on ℝ)"}),
        "lip_exact": ((), lipschitz.exact(model, interval).value,
                      {"description": "exact Lip on the grid's interval (piecewise linear)"}),
    }, coords={"x_grid": x_grid[:, 0].double().numpy()})


def regression_fit(model: nn.Module, history: xr.Dataset, method: Method,
                   train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], x_grid: Tensor,
                   target: Callable[[Tensor], Tensor], *, seed: int = 0) -> xr.Dataset:
    """One method's part of :func:`regression_result`: :func:`evaluate_regression` of the
    trained ``model`` with its training ``loss``, ``lam``, ``train_seconds`` and ``diverged``.

    A run that diverged (``ck.fit(..., on_nonfinite="record")``, ``diverged`` > 0) is not
    evaluated: it keeps its history only, and :func:`regression_result` gives it NaN.
    """
    epoch = diverged_epoch(history)
    trained = xr.Dataset({"loss": history["loss"], "lam": ((), float(method.lam)),
                          # the time of the last epoch trained (a diverged run's later are NaN)
                          "train_seconds": ((), float(history["time"].max())),
                          "diverged": ((), epoch, {"description": _REGRESSION_DIVERGED})})
    if epoch > 0:
        return trained
    fit = evaluate_regression(model, train, test, x_grid, target, seed=seed)
    return fit.assign(trained.data_vars)


def regression_result(fits: Mapping[str, xr.Dataset], train: tuple[Tensor, Tensor],
                      target: Callable[[Tensor], Tensor]) -> xr.Dataset:
    """The regression result: one :func:`regression_fit` per method (an
    :func:`evaluate_regression` with its ``loss``, ``lam`` and ``train_seconds``),
    concatenated over ``method``, and the data. A diverged method's evaluation is NaN; at
    least one method must have been evaluated."""
    evaluated = [name for name, fit in fits.items() if "x_grid" in fit.coords]
    if not evaluated:
        epochs = {name: int(fit["diverged"]) for name, fit in fits.items() if "diverged" in fit}
        raise ValueError(f"regression_result: no method was evaluated (every one diverged: "
                         f"{epochs or list(fits)}); lower the learning rate or λ")
    method = xr.DataArray(list(fits), dims="method", name="method")
    # a diverged method has its history only: concat fills the evaluation's variables with NaN
    ds = xr.concat(list(fits.values()), dim=method, coords="minimal", compat="override")
    if "diverged" in ds:
        ds["diverged"] = ds["diverged"].fillna(0).astype(int)
        ds["diverged"].attrs["description"] = _REGRESSION_DIVERGED
    x, y = train
    grid = torch.tensor(ds.x_grid.values)  # a copy: xarray's index values are read-only
    return ds.assign(
        x=("sample", x[:, 0].double().numpy()),
        y=("sample", y[:, 0].double().numpy()),
        target=("x_grid", target(grid).numpy()),
        label_mean=((), float(y.mean())),
    ).assign_coords(sample=np.arange(len(x)))

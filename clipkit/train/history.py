"""The training history as an xarray.Dataset over epoch (and the path's lam, seed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from clipkit.core.provenance import NAN_MEANS

DESCRIPTIONS = {
    "loss": "mean training loss (data term) over the epoch",
    "penalty": "mean penalty R(θ) over the epoch (CLIP: Lip_X^p)",
    "lam_epoch": "λ used in the epoch (the schedule applied to the base λ)",
    "lip": "CLIP estimate Lip_X: the largest pair quotient at each step's θ, mean over the "
           "epoch's steps",
    "skipped": "fraction of the epoch's steps whose penalty was skipped (CLIP skip_above)",
    "acc": "training accuracy over the epoch's batches",
    "test_loss": "test loss at the end of the epoch",
    "test_acc": "test accuracy at the end of the epoch",
    "score": "the selection score of the epoch (ck.BestEpoch)",
    "selected": "1 at the epoch whose weights were kept (ck.BestEpoch), 0 elsewhere",
    "time": "seconds since the start of training (with the test evaluation and on_epoch)",
}
#: ``diverged``, with ``on_nonfinite="record"`` (``ck.fit``, ``ck.fit_path``)
DIVERGED = ("epoch (from 1) in which the objective became NaN or infinite, after which "
            "training was stopped (the history is NaN from there); 0: trained to the end")


def diverged_epoch(history: xr.Dataset) -> int:
    """The epoch in which a ``fit(..., on_nonfinite="record")`` diverged; 0 where it did not
    (or where the history has no ``diverged``: trained in raise mode)."""
    return int(history["diverged"]) if "diverged" in history else 0


def history_dataset(arrays: dict[str, np.ndarray], lead_dims: dict[str, Sequence]) -> xr.Dataset:
    """Arrays (K, E) → a Dataset over (*lead_dims, epoch); K = product of the lead sizes."""
    dims = [*lead_dims, "epoch"]
    shape = [len(v) for v in lead_dims.values()]
    data = {}
    for name, arr in arrays.items():
        value = arr.reshape(*shape, arr.shape[-1])
        attrs = {"description": DESCRIPTIONS.get(name, name)}
        if name == "penalty" and np.isnan(value).all():
            attrs[NAN_MEANS] = "the method has no penalty"
        data[name] = xr.Variable(dims, value, attrs=attrs)
    n_epochs = next(iter(arrays.values())).shape[-1] if arrays else 0
    coords = {name: list(values) for name, values in lead_dims.items()}
    coords["epoch"] = np.arange(1, n_epochs + 1)
    return xr.Dataset(data, coords=coords)

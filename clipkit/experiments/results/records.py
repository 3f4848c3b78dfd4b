"""One run's result: swept parameters as scalar coordinates, provenance attrs, failures."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from clipkit.core.provenance import STATUS_DONE, STATUS_FAILED, provenance
from clipkit.experiments.results.files import save
from clipkit.experiments.results.schema import SWEPT_ATTR


def _as_coord(name: str, value: Any) -> Any:
    if isinstance(value, (list, tuple, np.ndarray)):
        raise TypeError(
            f"parameter {name!r} is a sequence; a swept parameter must be a scalar "
            "(a batched dimension is a dimension coordinate of the dataset itself)"
        )
    if value is None or isinstance(value, (dict, set)):
        raise TypeError(
            f"parameter {name!r} = {value!r} cannot be a coordinate; "
            "accepted: str, int, float, bool"
        )
    return value


def stamp(
    ds: xr.Dataset,
    params: Mapping[str, Any] | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    wall_time: float | None = None,
    status: str = STATUS_DONE,
    error: str = "",
    device: str | None = None,
) -> xr.Dataset:
    """Return ``ds`` with its swept parameters as scalar coordinates and provenance attrs.

    Args:
        ds: the run's results.
        params: the swept parameters (e.g. ``{"lam": 0.1, "seed": 0}``); each becomes a
            scalar coordinate unless ``ds`` already has it as a dimension (a batched path).
        config: the full configuration; default: ``params``.
        wall_time, status, error, device: see :func:`provenance`.
    """
    params = dict(params or {})
    scalars = {k: _as_coord(k, v) for k, v in params.items() if k not in ds.dims}
    out = ds.assign_coords(scalars)
    previous = ds.attrs.get(SWEPT_ATTR)
    swept = json.loads(previous) if isinstance(previous, str) else list(previous or [])
    out.attrs.update(
        provenance(config if config is not None else params, device=device,
                   wall_time=wall_time, status=status, error=error)
    )
    out.attrs[SWEPT_ATTR] = json.dumps([*swept, *(k for k in scalars if k not in swept)])
    return out


def failure(
    params: Mapping[str, Any],
    error: str,
    *,
    config: Mapping[str, Any] | None = None,
    wall_time: float | None = None,
) -> xr.Dataset:
    """A result dataset that records a failed run: its parameters, no data, the error text."""
    return stamp(xr.Dataset(), params, config=config, wall_time=wall_time,
                 status=STATUS_FAILED, error=str(error))


def record_failure(
    path: str | os.PathLike[str],
    params: Mapping[str, Any],
    error: str,
    *,
    config: Mapping[str, Any] | None = None,
    wall_time: float | None = None,
) -> Path:
    """Write :func:`failure` atomically to ``path``; return the path."""
    return save(failure(params, error, config=config, wall_time=wall_time), path)

"""Combine run files into one Dataset per sweep, by their swept coordinates."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import xarray as xr

from clipkit.experiments.results.files import load
from clipkit.experiments.results.schema import (
    COMBINED_NAME,
    STATUS_DONE,
    STATUS_MISSING,
    SWEPT_ATTR,
)

# --------------------------------------------------------------------------- combining


def _swept_names(ds: xr.Dataset) -> list[str]:
    """The scalar coordinates of a run that become dimensions on combine."""
    if SWEPT_ATTR in ds.attrs:
        raw = ds.attrs[SWEPT_ATTR]
        names = json.loads(raw) if isinstance(raw, str) else list(raw)
    else:  # a file written without stamp(): every scalar coordinate was swept
        names = [str(k) for k, c in ds.coords.items() if c.ndim == 0]
    return [n for n in names if n in ds.coords and ds.coords[n].ndim == 0]


def _as_grid_cell(ds: xr.Dataset, source: str) -> xr.Dataset:
    """One run, reduced to what a combined sweep holds, with its swept coords as dims."""
    status = str(ds.attrs.get("status", STATUS_DONE))
    keep = ds if status == STATUS_DONE else ds.drop_vars(list(ds.data_vars))
    wall = ds.attrs.get("wall_time", float("nan"))
    keep = keep.assign(
        status=((), status),
        error=((), str(ds.attrs.get("error", ""))),
        wall_time=((), float(wall) if isinstance(wall, (int, float)) else float("nan")),
        config=((), str(ds.attrs.get("config", ""))),
        source=((), source),
    )
    swept = _swept_names(ds)
    return keep.expand_dims(swept) if swept else keep


def _fill_strings(ds: xr.Dataset) -> xr.Dataset:
    """Replace the NaN an outer join puts into string variables, so netCDF can store them."""
    for name in ("status", "error", "config", "source"):
        filled = ds[name].values.astype(object)
        missing = np.array([not isinstance(v, str) for v in filled.ravel()]).reshape(filled.shape)
        if missing.any():
            filled[missing] = STATUS_MISSING if name == "status" else ""
        ds[name] = (ds[name].dims, filled.astype(str))
    return ds


def _result_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.glob("*.nc")
        if p.name != COMBINED_NAME and not p.name.startswith(".")
    )


def combine(runs: Iterable[xr.Dataset], sources: Iterable[str] | None = None) -> xr.Dataset:
    """Combine run datasets into one by their swept coordinates.

    Finished runs contribute their data; failed runs only their ``status`` and ``error``
    (their data are NaN). Grid cells with no run have status ``"missing"``. Attrs that all
    runs share (versions, device, ...) are kept; per-run ones (configuration, wall time)
    become the variables ``config`` and ``wall_time``.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("no runs to combine")
    sources = list(sources) if sources is not None else [""] * len(runs)
    cells = [_as_grid_cell(ds, src) for ds, src in zip(runs, sources, strict=True)]
    # xr.merge with an outer join, rather than combine_by_coords: it also accepts a grid
    # with holes (failed or unfinished points), which combine_by_coords rejects.
    merged = xr.merge(cells, compat="no_conflicts", join="outer", combine_attrs="drop_conflicts")
    for key in ("config", "wall_time", "status", "error", SWEPT_ATTR):
        merged.attrs.pop(key, None)
    return _fill_strings(merged)


def open_sweep(folder: str | os.PathLike[str]) -> xr.Dataset:
    """Combine every run file of a sweep folder into one Dataset (see :func:`combine`).

    ``folder`` is a sweep's output folder (its runs under ``points/``) or a folder of run
    files itself. Unreadable files (e.g. left by a foreign writer) raise an error naming them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"sweep folder {str(folder)!r} does not exist")
    runs_dir = folder / "points" if (folder / "points").is_dir() else folder
    files = _result_files(runs_dir)
    if not files:
        raise FileNotFoundError(f"no result files (*.nc) in {str(runs_dir)!r}")
    runs = []
    for f in files:
        try:
            runs.append(load(f))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read result file {str(f)!r}: {exc}") from exc
    return combine(runs, [f.name for f in files])


def has_nan(ds: xr.Dataset) -> list[str]:
    """Names of the floating-point data variables of ``ds`` that contain NaN."""
    bad = []
    for name, var in ds.data_vars.items():
        if var.dtype.kind in "fc" and bool(np.isnan(var.values).any()):
            bad.append(str(name))
    return bad

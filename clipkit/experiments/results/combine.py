"""Combine run files into one Dataset per sweep, by their swept coordinates."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from clipkit.experiments.results.files import load
from clipkit.experiments.results.schema import (
    COMBINED_NAME,
    NAN_MEANS,
    NOTEBOOK_ATTR,
    POINT_ATTR,
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


#: Attrs that every run has its own value of: variables (or, for the sweep's bookkeeping,
#: dropped) on combine, whatever their values.
_PER_RUN = ("config", "wall_time", "status", "error", "source", SWEPT_ATTR, POINT_ATTR)
PER_RUN_ATTR = "per-run attribute: its value differs between the runs of this sweep"


def _differing_attrs(runs: list[xr.Dataset]) -> list[str]:
    """Attrs with more than one value among the runs that have them (e.g. ``method_config``
    in a sweep over methods, ``device`` over GPUs): kept as variables, not dropped."""
    values: dict[str, set[str]] = {}
    for ds in runs:
        for key, value in ds.attrs.items():
            if key not in _PER_RUN and key not in ds.variables:
                values.setdefault(str(key), set()).add(repr(value))
    return sorted(k for k, v in values.items() if len(v) > 1)


def _as_grid_cell(ds: xr.Dataset, source: str, per_run: Sequence[str] = ()) -> xr.Dataset:
    """One run, reduced to what a combined sweep holds, with its swept coords as dims;
    the attrs ``per_run`` become string variables."""
    status = str(ds.attrs.get("status", STATUS_DONE))
    keep = ds if status == STATUS_DONE else ds.drop_vars(list(ds.data_vars))
    wall = ds.attrs.get("wall_time", float("nan"))
    keep = keep.assign(
        status=((), status),
        error=((), str(ds.attrs.get("error", ""))),
        wall_time=((), float(wall) if isinstance(wall, (int, float)) else float("nan")),
        config=((), str(ds.attrs.get("config", ""))),
        source=((), source),
        **{k: ((), str(ds.attrs.get(k, "")), {"description": PER_RUN_ATTR}) for k in per_run},
    )
    keep.attrs = {k: v for k, v in keep.attrs.items() if k not in per_run}
    swept = _swept_names(ds)
    return keep.expand_dims(swept) if swept else keep


def _fill_strings(ds: xr.Dataset, per_run: Iterable[str] = ()) -> xr.Dataset:
    """Replace the NaN an outer join puts into string variables, so netCDF can store them."""
    for name in ("status", "error", "config", "source", *per_run):
        filled = ds[name].values.astype(object)
        missing = np.array([not isinstance(v, str) for v in filled.ravel()]).reshape(filled.shape)
        if missing.any():
            filled[missing] = STATUS_MISSING if name == "status" else ""
        ds[name] = (ds[name].dims, filled.astype(str), ds[name].attrs)
    return ds


UNSET = "(unset)"


def changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every key whose value differs, sorted by key;
    :data:`UNSET` stands for a key that one side lacks."""
    return [(k, old.get(k, UNSET), new.get(k, UNSET)) for k in sorted(set(old) | set(new))
            if old.get(k, UNSET) != new.get(k, UNSET)]


def _one_setting(runs: list[xr.Dataset], names: list[str]) -> None:
    """Raise a ValueError naming the files if the runs of a sweep were made with different
    fixed parameters or notebooks (e.g. a folder reused after the spec changed)."""
    first: tuple[str, dict, str] | None = None
    for ds, name in zip(runs, names, strict=True):
        raw = ds.attrs.get(POINT_ATTR)
        if not isinstance(raw, str):
            continue  # not written by a sweep: nothing to compare
        try:
            params = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(params, dict):
            continue
        per_point = set(_swept_names(ds)) | {str(d) for d in ds.dims}
        per_point |= {n.split(".")[0] for n in per_point}  # "lams.clip" sweeps a key of lams
        fixed = {k: v for k, v in params.items() if k not in per_point}
        notebook = str(ds.attrs.get(NOTEBOOK_ATTR, ""))
        if first is None:
            first = (name, fixed, notebook)
            continue
        name0, fixed0, notebook0 = first
        what = ""
        if notebook and notebook0 and notebook != notebook0:
            what = f"notebook {notebook0} in {name0}, {notebook} in {name}"
        elif diff := changed(fixed0, fixed):
            key, a, b = diff[0]
            what = f"{key}={a!r} in {name0}, {b!r} in {name}"
        if what:
            raise ValueError(
                f"the runs were made with different settings ({what}), so they are not one "
                f"grid; combine the runs of one setting (a sweep's combined.nc holds those "
                f"of its last run)")


def _same_point(runs: list[xr.Dataset], names: list[str]) -> str:
    """Two runs of one grid point, named, or ""."""
    seen: dict[tuple, str] = {}
    for ds, name in zip(runs, names, strict=True):
        point = tuple((n, ds.coords[n].item()) for n in sorted(_swept_names(ds)))
        if point in seen:
            where = ", ".join(f"{n}={v!r}" for n, v in point) or "no swept coordinates"
            return f"{seen[point]} and {name} are runs of the same grid point ({where})"
        seen[point] = name
    return ""


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
    become the variables ``config`` and ``wall_time``, and an attr whose value differs
    between runs (``method_config`` in a sweep over methods) a string variable of its name.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("no runs to combine")
    sources = list(sources) if sources is not None else [""] * len(runs)
    names = [src or f"run {i}" for i, src in enumerate(sources)]
    _one_setting(runs, names)
    per_run = _differing_attrs(runs)
    cells = [_as_grid_cell(ds, src, per_run) for ds, src in zip(runs, sources, strict=True)]
    # xr.merge with an outer join, rather than combine_by_coords: it also accepts a grid
    # with holes (failed or unfinished points), which combine_by_coords rejects.
    try:
        merged = xr.merge(cells, compat="no_conflicts", join="outer",
                          combine_attrs="drop_conflicts")
    except xr.MergeError as exc:
        why = _same_point(runs, names) or "the runs hold conflicting values"
        raise ValueError(f"cannot combine the runs into one grid: {why} (xarray: {exc})"
                         ) from None
    for key in _PER_RUN:
        merged.attrs.pop(key, None)
    return _fill_strings(merged, per_run)


def open_sweep(folder: str | os.PathLike[str]) -> xr.Dataset:
    """Combine every run file of a sweep folder into one Dataset (see :func:`combine`).

    ``folder`` is a sweep's output folder (its runs under ``points/``) or a folder of run
    files itself. Unreadable files (e.g. left by a foreign writer) raise an error naming them.
    """
    folder = Path(folder)
    if folder.is_file():
        raise NotADirectoryError(f"{str(folder)!r} is a file: open_sweep takes a sweep's "
                                 f"folder; read one result file with ck.results.load")
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
    """Names of the floating-point data variables of ``ds`` that contain NaN, except NaN by
    design: in a variable whose ``nan_means`` attribute says what NaN means there
    (:data:`NAN_MEANS`), and in the runs that a ``diverged`` variable records as diverged
    (> 0: their training became NaN or infinite, ``on_nonfinite="record"``)."""
    diverged = ds["diverged"] > 0 if "diverged" in ds else None
    bad = []
    for name, var in ds.data_vars.items():
        if var.dtype.kind not in "fc" or var.attrs.get(NAN_MEANS):
            continue
        nan = np.isnan(var)
        if diverged is not None and set(diverged.dims) <= set(var.dims):
            nan = nan & ~diverged
        if bool(nan.any()):
            bad.append(str(name))
    return bad

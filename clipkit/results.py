"""Results as xarray: one Dataset per run, atomic netCDF files, sweeps combined by coordinates.

The schema (DESIGN §6):

* the swept parameters of a run (``lam``, ``seed``, ``method``, ...) are **scalar
  coordinates**; :func:`open_sweep` turns them into dimensions when it combines runs;
* histories run over ``epoch``; robustness over ``attack`` and ``eps``;
* provenance lives in attrs: clipkit/torch/Python versions, device, the configuration
  as a JSON string, wall time, ``status`` (``"done"`` or ``"failed"``) and ``error``.

netCDF attrs hold only strings, numbers and arrays of numbers, so :func:`save` stores any
other attr (dict, list, None, bool) as JSON and :func:`load` decodes it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import sys
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "ENGINE",
    "STATUS_DONE",
    "STATUS_FAILED",
    "STATUS_MISSING",
    "COMBINED_NAME",
    "provenance",
    "stamp",
    "failure",
    "record_failure",
    "save",
    "load",
    "check_engine",
    "status_of",
    "read_error",
    "move_aside",
    "open_sweep",
    "to_json",
]

ENGINE = "h5netcdf"  # explicit: files never depend on which netCDF backend is installed
STATUS_DONE = "done"
STATUS_FAILED = "failed"
STATUS_MISSING = "missing"  # used only in combined sweeps, for grid cells with no run file
COMBINED_NAME = "combined.nc"
SWEPT_ATTR = "swept"  # JSON list of the scalar coordinates that become dimensions on combine
_JSON_ATTRS = "clipkit_json_attrs"  # names of attrs that save() stored as JSON
_TMP_SUFFIX = ".tmp"
UNREADABLE_SUFFIX = "unreadable"  # bad result files are renamed NAME.nc.unreadable-DATE


# --------------------------------------------------------------------------- provenance


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(
        f"cannot store {type(obj).__name__} {obj!r} as JSON; "
        "accepted: str, int, float, bool, None, lists, dicts, numpy scalars/arrays, paths"
    )


def to_json(value: Any) -> str:
    """Canonical JSON (sorted keys) of a configuration value; numpy scalars become numbers."""
    return json.dumps(value, sort_keys=True, default=_json_default, allow_nan=True)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _clipkit_version() -> str:
    from clipkit import __version__

    return __version__


def _device() -> str:
    """The device this process computes on; torch is consulted only if it is already imported."""
    torch = sys.modules.get("torch")  # a run that never imported torch used no GPU
    if torch is not None and torch.cuda.is_available():
        index = torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def provenance(
    config: Mapping[str, Any] | None = None,
    *,
    device: str | None = None,
    wall_time: float | None = None,
    status: str = STATUS_DONE,
    error: str = "",
) -> dict[str, str | float]:
    """The provenance attrs of one run: versions, device, configuration (JSON), status.

    Args:
        config: the run's full configuration (its parameters); stored as a JSON string.
        device: where it ran; default: the current CUDA device if torch uses one, else "cpu".
        wall_time: seconds the run took; NaN when unknown.
        status: ``"done"`` or ``"failed"``.
        error: the error text of a failed run.
    """
    if status not in (STATUS_DONE, STATUS_FAILED):
        raise ValueError(f"status must be {STATUS_DONE!r} or {STATUS_FAILED!r}, got {status!r}")
    return {
        "clipkit_version": _clipkit_version(),
        "torch_version": _version("torch"),
        "xarray_version": xr.__version__,
        "python_version": platform.python_version(),
        "device": device if device is not None else _device(),
        "config": to_json(dict(config) if config is not None else {}),
        "wall_time": float("nan") if wall_time is None else float(wall_time),
        "status": status,
        "error": error,
    }


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


# --------------------------------------------------------------------------- files


def _netcdf_attr(value: Any) -> bool:
    """Whether netCDF stores ``value`` as an attr as it is."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "iuf" and value.ndim == 1
    return False


def _encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    encoded: list[str] = []
    for key, value in attrs.items():
        if key == _JSON_ATTRS:
            continue
        if _netcdf_attr(value):
            out[key] = value
        else:
            try:
                out[key] = to_json(value)
            except TypeError as exc:
                raise TypeError(f"attr {key!r}: {exc}") from None
            encoded.append(key)
    if encoded:
        out[_JSON_ATTRS] = json.dumps(encoded)
    return out


def _decode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(attrs)
    for key in json.loads(out.pop(_JSON_ATTRS, "[]")):
        if key in out:
            out[key] = json.loads(out[key])
    return out


def _with_encoded_attrs(ds: xr.Dataset) -> xr.Dataset:
    out = ds.copy(deep=False)
    out.attrs = _encode_attrs(ds.attrs)
    for name in list(out.variables):
        out[name].attrs = _encode_attrs(ds[name].attrs)
        if out[name].dtype.kind in "UO":
            # a string variable loaded from a file keeps that file's fixed width (e.g. <U4
            # for "clip") in its encoding; after a merge with longer strings ("standard")
            # writing with it would truncate them, so strings are written at their own width
            out[name].encoding.pop("dtype", None)
    return out


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot open a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_engine() -> None:
    """Raise ImportError, saying what to install, when the netCDF engine cannot write files."""
    import importlib.util

    missing = [m for m in ("h5netcdf", "h5py") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"clipkit.results writes netCDF with {ENGINE}, which needs "
            f"{' and '.join(missing)}: pip install {' '.join(missing)}"
        )


def _create_temporary(folder: Path, name: str) -> Path:
    """A new empty file ``.NAME.<random>.tmp`` in ``folder``, created with mode 0o666.

    Not ``tempfile.mkstemp``: it creates files with mode 0o600, so a result renamed into
    place would be unreadable to the rest of a group on a shared filesystem. Opening with
    ``O_CREAT | O_EXCL`` and mode 0o666 lets the process umask decide, as for any new file.
    """
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary file name for {name!r} in {str(folder)!r}")


def save(ds: xr.Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``ds`` to netCDF at ``path`` atomically; return the path.

    The data go to a temporary file in the same folder, which is flushed to disk and then
    renamed over ``path`` (``os.replace``): a reader, or a sweep killed mid-write, sees the
    old file or the new one, never half a file. A failed write (disk full, no permission)
    removes the temporary file, leaves ``path`` as it was and raises an OSError naming
    ``path``. The file gets the permissions of any new file (mode 0o666 less the umask).
    """
    path = Path(path)
    if not str(path) or path.is_dir():
        raise ValueError(f"result path {str(path)!r} must name a file, e.g. 'run.nc'")
    folder = path.parent
    encoded = _with_encoded_attrs(ds)
    tmp: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = _create_temporary(folder, path.name)
        encoded.to_netcdf(tmp, engine=ENGINE)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        message = f"cannot write result file {str(path)!r}: {exc.strerror or exc}"
        if exc.errno is None:
            raise OSError(message) from exc
        raise OSError(exc.errno, message) from exc  # e.g. PermissionError for EACCES
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(folder)
    return path


def _remove(tmp: Path | None) -> None:
    if tmp is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read a result file fully into memory (the file is closed again) and decode its attrs."""
    ds = xr.load_dataset(path, engine=ENGINE)
    ds.attrs = _decode_attrs(ds.attrs)
    for name in list(ds.variables):
        ds[name].attrs = _decode_attrs(ds[name].attrs)
    return ds


def status_of(path: str | os.PathLike[str]) -> str | None:
    """The ``status`` attr of a result file, or None if it is absent or unreadable."""
    try:
        with xr.open_dataset(path, engine=ENGINE) as ds:
            status = ds.attrs.get("status")
    except (OSError, ValueError):  # missing, truncated or not netCDF
        return None
    return str(status) if status is not None else None


def read_error(path: str | os.PathLike[str]) -> str:
    """Why the result file ``path`` cannot be read in full; "" when it can.

    Every variable is read (a truncated file may still open), so this costs a full load.
    """
    try:
        load(path)
    except Exception as exc:  # h5py, h5netcdf and xarray raise several kinds for bad files
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0] if text else ''}"
    return ""


def move_aside(path: str | os.PathLike[str]) -> Path:
    """Rename a bad result file to ``NAME.nc.unreadable-<date-time>`` beside it; return that.

    The new name does not end in ``.nc``, so no sweep combines or skips it, and nothing
    is deleted: the file stays there for inspection.
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{UNREADABLE_SUFFIX}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{UNREADABLE_SUFFIX}-{stamp}-{n}")
    os.replace(path, target)
    return target


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

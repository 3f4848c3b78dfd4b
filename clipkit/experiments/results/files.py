"""Result files: atomic netCDF writes (engine given explicitly), reads, checks."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from clipkit.core.provenance import to_json
from clipkit.experiments.results.schema import ENGINE, JSON_ATTRS, UNREADABLE_SUFFIX

TMP_SUFFIX = ".tmp"  # a save's temporary file: .NAME.RANDOM.tmp beside NAME


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
        if key == JSON_ATTRS:
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
        out[JSON_ATTRS] = json.dumps(encoded)
    return out


def _decode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(attrs)
    for key in json.loads(out.pop(JSON_ATTRS, "[]")):
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
        encoded_as = out[name].encoding.get("dtype")
        if (encoded_as is not None and np.dtype(encoded_as).kind in "iub"
                and out[name].dtype.kind == "f"):
            # an integer variable loaded from a file (``diverged``) turns float when a merge
            # gives it NaN (a failed or missing point); written with its old integer dtype,
            # each NaN would become -2**63 in the file: it is written as the float it is now
            for key in ("dtype", "_FillValue", "missing_value"):
                out[name].encoding.pop(key, None)
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
        tmp = folder / f".{name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
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
    """Read a result file fully into memory (the file is closed again) and decode its attrs.

    A file that is missing raises FileNotFoundError; one that is not a readable result file
    (another format, truncated) a ValueError naming it.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no result file {str(path)!r}")
    try:
        ds = xr.load_dataset(path, engine=ENGINE)
    except Exception as exc:  # h5py, h5netcdf and xarray raise several kinds for bad files
        text = str(exc).strip().splitlines()
        raise ValueError(f"{str(path)!r} is not a readable result file (netCDF4 via "
                         f"{ENGINE}): {type(exc).__name__}: {text[0] if text else ''}") from exc
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
        exc = exc.__cause__ or exc  # what the reader said, without load's wrapping
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0] if text else ''}"
    return ""


def move_aside(path: str | os.PathLike[str], reason: str = UNREADABLE_SUFFIX) -> Path:
    """Rename a result file to ``NAME.nc.<reason>-<date-time>`` beside it; return that.

    ``reason``: ``"unreadable"`` (a bad file) or ``"superseded"`` (a finished result of
    other parameters). The new name does not end in ``.nc``, so no sweep combines or skips
    it, and nothing is deleted: the file stays there for inspection.
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{reason}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{reason}-{stamp}-{n}")
    os.replace(path, target)
    return target

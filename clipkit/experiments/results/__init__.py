"""Results as xarray: one Dataset per run, atomic netCDF files, sweeps combined by coordinates.

The file format every notebook, sweep and report shares:

* the swept parameters of a run (``lam``, ``seed``, ``method``, ...) are **scalar
  coordinates**; :func:`open_sweep` / :func:`combine` turn them into dimensions (in the
  order they were swept) when they combine runs;
* histories run over ``epoch``; robustness over ``attack`` and ``eps``; the variables of
  the classification and regression evaluations are documented in
  ``clipkit.experiments.evaluate`` (and in ``docs/results.md``);
* provenance lives in attrs (:func:`clipkit.core.provenance.provenance`): clipkit, torch,
  xarray and Python versions, device, the configuration as a JSON string, wall time,
  ``status`` (``"done"`` or ``"failed"``) and ``error``.

netCDF attrs hold only strings, numbers and arrays of numbers, so :func:`save` stores any
other attr (dict, list, None, bool) as JSON and :func:`load` decodes it again. Files are
written with the ``h5netcdf`` engine, named explicitly.

Modules: ``schema`` (names), ``records`` (one run: stamp, failure), ``files`` (save, load,
checks), ``combine`` (a sweep's runs into one Dataset).
"""

from clipkit.core.provenance import STATUS_DONE, STATUS_FAILED, provenance, to_json
from clipkit.experiments.results.combine import combine, has_nan, open_sweep
from clipkit.experiments.results.files import (
    check_engine,
    load,
    move_aside,
    read_error,
    save,
    status_of,
)
from clipkit.experiments.results.records import failure, record_failure, stamp
from clipkit.experiments.results.schema import (
    COMBINED_NAME,
    ENGINE,
    NAN_MEANS,
    NOTEBOOK_ATTR,
    POINT_ATTR,
    STATUS_MISSING,
    SUPERSEDED_SUFFIX,
    SWEPT_ATTR,
    UNREADABLE_SUFFIX,
)

__all__ = [
    "COMBINED_NAME",
    "ENGINE",
    "NAN_MEANS",
    "NOTEBOOK_ATTR",
    "POINT_ATTR",
    "STATUS_DONE",
    "STATUS_FAILED",
    "STATUS_MISSING",
    "SUPERSEDED_SUFFIX",
    "SWEPT_ATTR",
    "UNREADABLE_SUFFIX",
    "check_engine",
    "combine",
    "failure",
    "has_nan",
    "load",
    "move_aside",
    "open_sweep",
    "provenance",
    "read_error",
    "record_failure",
    "save",
    "stamp",
    "status_of",
    "to_json",
]

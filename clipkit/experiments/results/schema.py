"""Names shared by every result file: statuses, the combined file, attrs clipkit reserves."""

from __future__ import annotations

from clipkit.core.provenance import NAN_MEANS, STATUS_DONE, STATUS_FAILED

__all__ = [
    "COMBINED_NAME",
    "ENGINE",
    "JSON_ATTRS",
    "NAN_MEANS",
    "NOTEBOOK_ATTR",
    "POINT_ATTR",
    "STATUS_DONE",
    "STATUS_FAILED",
    "STATUS_MISSING",
    "SWEPT_ATTR",
    "SUPERSEDED_SUFFIX",
    "UNREADABLE_SUFFIX",
]

ENGINE = "h5netcdf"  # explicit: files never depend on which netCDF backend is installed
STATUS_MISSING = "missing"  # used only in combined sweeps, for grid cells with no run file
COMBINED_NAME = "combined.nc"
SWEPT_ATTR = "swept"  # JSON list of the scalar coordinates that become dimensions on combine
JSON_ATTRS = "clipkit_json_attrs"  # names of attrs that save() stored as JSON
UNREADABLE_SUFFIX = "unreadable"  # bad result files are renamed NAME.nc.unreadable-DATE
#: a finished result of other parameters, in a folder a sweep reuses: NAME.nc.superseded-DATE
SUPERSEDED_SUFFIX = "superseded"
POINT_ATTR = "sweep_point"  # JSON of the parameters a sweep ran a point with
NOTEBOOK_ATTR = "sweep_notebook"  # the file name of the notebook that computed it

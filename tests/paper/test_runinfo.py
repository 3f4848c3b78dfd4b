"""The report's run facts read each point file once, and again when the file changes."""

from __future__ import annotations

import xarray as xr

from clipkit.experiments import results
from clipkit.paper import runinfo


def _point(path, source: str, wall: float) -> None:
    ds = results.stamp(xr.Dataset({"final": ((), 1.0)}), {"seed": 0},
                       config={"seed": 0}, wall_time=wall)
    ds.attrs["data_source"] = source
    results.save(ds, path)


def test_point_attrs_are_read_again_after_a_file_is_rewritten(tmp_path):
    points = tmp_path / "runs" / "table" / "points"
    _point(points / "seed=0.nc", "first data", 2.0)
    runs = tmp_path / "runs"
    assert runinfo.data_sources(runs, ["table"]) == {"first data"}
    assert runinfo.compute_time(runs, ["table"])["seconds"] == 2.0
    _point(points / "seed=0.nc", "second data", 5.0)  # replaced (a rerun of the point)
    assert runinfo.data_sources(runs, ["table"]) == {"second data"}
    assert runinfo.compute_time(runs, ["table"])["seconds"] == 5.0
    _point(points / "seed=1.nc", "second data", 1.0)
    assert runinfo.compute_time(runs, ["table"]) == {"devices": {"cpu": 2}, "runs": 2,
                                                      "seconds": 6.0}
    # what a caller does with the attrs does not change what the next caller reads
    runinfo.point_attrs(runs, "table")[0]["data_source"] = "edited"
    assert runinfo.data_sources(runs, ["table"]) == {"second data"}

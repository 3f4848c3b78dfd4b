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
    assert runinfo.data_sources(runs, ["table"]) == {"first data": ["table"]}
    assert runinfo.compute_time(runs, ["table"])["seconds"] == 2.0
    _point(points / "seed=0.nc", "second data", 5.0)  # replaced (a rerun of the point)
    assert runinfo.data_sources(runs, ["table"]) == {"second data": ["table"]}
    assert runinfo.compute_time(runs, ["table"])["seconds"] == 5.0
    _point(points / "seed=1.nc", "second data", 1.0)
    assert runinfo.compute_time(runs, ["table"]) == {"devices": {"cpu": 2}, "runs": 2,
                                                      "seconds": 6.0}
    # what a caller does with the attrs does not change what the next caller reads
    runinfo.point_attrs(runs, "table")[0]["data_source"] = "edited"
    assert runinfo.data_sources(runs, ["table"]) == {"second data": ["table"]}
    # each sentence names the sweeps that say it, so two data lines are told apart
    _point(tmp_path / "runs" / "tradeoff" / "points" / "seed=0.nc", "second data", 1.0)
    _point(tmp_path / "runs" / "theory" / "points" / "seed=0.nc", "third data", 1.0)
    assert runinfo.data_sources(runs, ["tradeoff", "table", "theory"]) == {
        "second data": ["tradeoff", "table"], "third data": ["theory"]}


def test_the_profile_line_names_pgd_restarts_only_where_a_run_used_them():
    from clipkit.paper.runinfo import _classification_line

    def fact(**config):
        base = {"dataset": "mnist", "epochs": 2, "seed": 0, "select": "last", "n_eval": 50,
                "authors_pgd_steps": 100, "pgd_steps": 20}
        return {"config": {**base, **config}, "method_config": {"method": "Standard"},
                "train_images": 100, "validation_images": None}

    assert "clipkit's PGD 20)" in _classification_line("table", [fact()])
    assert "clipkit's PGD 20)" in _classification_line("table", [fact(pgd_restarts=1)])
    line = _classification_line("table", [fact(pgd_restarts=5)])
    assert "clipkit's PGD 20 with 5 restarts)" in line

"""clipkit.results: the run schema, atomic files, combining runs by coordinates."""

from __future__ import annotations

import errno
import json
import os
import platform

import numpy as np
import pytest
import xarray as xr

from clipkit import results


def run_ds(lam: float, seed: int, *, epochs: int = 3) -> xr.Dataset:
    """A run's Dataset as a notebook would build it."""
    epoch = np.arange(epochs)
    ds = xr.Dataset(
        {"loss": ("epoch", lam * (epoch + 1.0) + seed), "lip": ((), 10 * lam + seed)},
        coords={"epoch": epoch},
    )
    return results.stamp(ds, {"lam": lam, "seed": seed}, config={"lam": lam, "seed": seed,
                                                                  "optimizer": None},
                         wall_time=1.5)


def test_round_trip_keeps_data_and_provenance(tmp_path):
    ds = run_ds(0.1, 2)
    ds.attrs["flags"] = {"warmup": True, "schedule": None}  # netCDF cannot hold these as such
    ds.attrs["debug"] = False
    path = results.save(ds, tmp_path / "run.nc")
    back = results.load(path)

    xr.testing.assert_identical(back.drop_attrs(), ds.drop_attrs())
    assert back.attrs["status"] == "done" and back.attrs["error"] == ""
    assert back.attrs["python_version"] == platform.python_version()
    assert back.attrs["clipkit_version"] and back.attrs["torch_version"]
    assert back.attrs["device"] == "cpu"
    assert back.attrs["wall_time"] == 1.5
    assert json.loads(back.attrs["config"]) == {"lam": 0.1, "seed": 2, "optimizer": None}
    assert back.attrs["flags"] == {"warmup": True, "schedule": None}
    assert back.attrs["debug"] is False
    assert float(back["lam"]) == 0.1 and int(back["seed"]) == 2  # scalar coordinates
    assert back["lam"].ndim == 0


def test_stamp_rejects_values_that_are_not_coordinates():
    with pytest.raises(TypeError, match="'lams'"):
        results.stamp(xr.Dataset(), {"lams": [0.1, 1.0]})
    with pytest.raises(TypeError, match="'opt'"):
        results.stamp(xr.Dataset(), {"opt": None})
    with pytest.raises(ValueError, match="status"):
        results.provenance({}, status="ok")


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path):
    path = results.save(run_ds(0.1, 0), tmp_path / "run.nc")
    before = path.read_bytes()
    mixed = xr.Dataset({"x": ("i", np.array([1, "a", None], dtype=object))})  # unencodable
    with pytest.raises((TypeError, ValueError)):
        results.save(mixed, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["run.nc"]

    with pytest.raises((TypeError, ValueError)):
        results.save(mixed, tmp_path / "new.nc")
    assert sorted(os.listdir(tmp_path)) == ["run.nc"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_result_files_get_the_permissions_of_any_new_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = results.save(run_ds(0.1, 0), tmp_path / "sub" / "run.nc")
        (tmp_path / "plain").write_text("x")  # what the umask gives an ordinary file
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    assert path.parent.stat().st_mode & 0o777 == 0o777 & ~umask


@pytest.mark.parametrize(("err", "kind"), [(errno.ENOSPC, OSError),
                                           (errno.EACCES, PermissionError)])
def test_a_write_that_fails_midway_names_the_file_and_leaves_nothing(tmp_path, monkeypatch,
                                                                     err, kind):
    path = results.save(run_ds(0.1, 0), tmp_path / "run.nc")
    before = path.read_bytes()

    def half_then_fail(self, target, *args, **kwargs):
        with open(target, "wb") as fh:  # the disk fills up (or access ends) mid-write
            fh.write(before[: len(before) // 2])
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(xr.Dataset, "to_netcdf", half_then_fail)
    for target in (path, tmp_path / "new.nc"):
        with pytest.raises(kind, match=f"cannot write result file '{target}': "
                                       f"{os.strerror(err)}") as info:
            results.save(run_ds(1.0, 1), target)
        assert info.value.errno == err
    assert path.read_bytes() == before  # the old result stays whole
    assert sorted(os.listdir(tmp_path)) == ["run.nc"]  # no partial or temporary file


def test_an_unreadable_result_is_named_and_moved_aside_not_deleted(tmp_path):
    good = results.save(run_ds(0.1, 0), tmp_path / "good.nc")
    assert results.read_error(good) == ""
    bad = tmp_path / "bad.nc"
    bad.write_bytes(good.read_bytes()[:2000])  # truncated
    assert results.read_error(bad).startswith("OSError")
    with pytest.raises(ValueError, match=r"bad.nc' is not a readable result file .*OSError"):
        results.load(bad)
    with pytest.raises(FileNotFoundError, match="no result file .*nowhere.nc"):
        results.load(tmp_path / "nowhere.nc")
    moved = results.move_aside(bad)
    assert moved.parent == tmp_path and moved.name.startswith("bad.nc.unreadable-")
    assert moved.read_bytes() == good.read_bytes()[:2000] and not bad.exists()
    assert results.open_sweep(tmp_path)["status"].size == 1  # no longer a result file


def test_an_attr_that_cannot_be_stored_is_named(tmp_path):
    ds = run_ds(0.1, 0)
    ds.attrs["model"] = object()
    with pytest.raises(TypeError, match="attr 'model'"):
        results.save(ds, tmp_path / "run.nc")
    assert os.listdir(tmp_path) == []


def test_combine_by_coordinates_puts_swept_dims_first(tmp_path):
    for lam in (0.1, 1.0):
        for seed in (0, 1, 2):
            results.save(run_ds(lam, seed), tmp_path / f"lam={lam}_seed={seed}.nc")
    (tmp_path / ".lam=9_seed=9.nc.abc.tmp").write_bytes(b"half a file")  # a killed write
    combined = results.open_sweep(tmp_path)

    assert dict(combined.sizes) == {"lam": 2, "seed": 3, "epoch": 3}
    assert combined["loss"].dims == ("lam", "seed", "epoch")
    np.testing.assert_allclose(combined["lam"], [0.1, 1.0])
    np.testing.assert_array_equal(combined["seed"], [0, 1, 2])
    expected = combined["lam"] * (combined["epoch"] + 1.0) + combined["seed"]
    np.testing.assert_allclose(combined["loss"], expected.transpose(*combined["loss"].dims))
    assert (combined["status"] == "done").all()
    assert combined.attrs["python_version"] == platform.python_version()
    assert "config" not in combined.attrs  # per-run: a variable instead
    assert json.loads(str(combined["config"].sel(lam=1.0, seed=2).item()))["seed"] == 2


def test_failed_and_missing_runs_stay_visible(tmp_path):
    results.save(run_ds(0.1, 0), tmp_path / "a.nc")
    results.save(run_ds(0.1, 1), tmp_path / "b.nc")
    results.record_failure(tmp_path / "c.nc", {"lam": 1.0, "seed": 0}, "RuntimeError: diverged")
    combined = results.open_sweep(tmp_path)

    assert dict(combined.sizes) == {"lam": 2, "seed": 2, "epoch": 3}
    status = combined["status"]
    assert status.sel(lam=0.1, seed=0) == "done"
    assert status.sel(lam=1.0, seed=0) == "failed"
    assert status.sel(lam=1.0, seed=1) == "missing"  # no file at all
    assert combined["error"].sel(lam=1.0, seed=0) == "RuntimeError: diverged"
    assert np.isnan(combined["loss"].sel(lam=1.0)).all()
    # the combined Dataset itself is a valid file
    back = results.load(results.save(combined, tmp_path / "combined.nc"))
    xr.testing.assert_identical(back["status"], combined["status"])
    assert results.open_sweep(tmp_path).sizes == combined.sizes  # combined.nc is not a run


def test_batched_dimension_combines_with_swept_ones(tmp_path):
    for seed in (0, 1):
        lam = np.array([0.1, 0.5, 1.0])
        ds = xr.Dataset({"lip": ("lam", lam + seed)}, coords={"lam": lam})
        results.save(results.stamp(ds, {"seed": seed}), tmp_path / f"seed={seed}.nc")
    combined = results.open_sweep(tmp_path)
    assert dict(combined.sizes) == {"seed": 2, "lam": 3}
    np.testing.assert_allclose(combined["lip"].sel(seed=1), [1.1, 1.5, 2.0])


def test_status_of_and_nan_check(tmp_path):
    assert results.status_of(tmp_path / "none.nc") is None
    (tmp_path / "bad.nc").write_bytes(b"not netcdf")
    assert results.status_of(tmp_path / "bad.nc") is None
    path = results.record_failure(tmp_path / "f.nc", {"seed": 0}, "boom")
    assert results.status_of(path) == "failed"
    ds = run_ds(0.1, 0)
    assert results.has_nan(ds) == []
    ds["loss"][1] = np.nan
    assert results.has_nan(ds) == ["loss"]


def test_nan_by_design_is_not_counted_and_other_nan_is():
    """NaN in a variable that says what NaN means there, and in a run recorded as
    diverged, are by design; any other NaN, beside them, still counts."""
    lam = [0.0, 0.1, 1.0]
    ds = xr.Dataset({"robust_acc": (("lam", "eps"), [[0.9, np.nan]] * 3),
                     "loss": (("lam", "epoch"), np.ones((3, 4))),
                     "clean_acc": ("lam", [0.9, 0.8, 0.7])},
                    coords={"lam": lam, "eps": [0.0, 0.5], "epoch": [1, 2, 3, 4]})
    assert results.has_nan(ds) == ["robust_acc"]
    ds["robust_acc"].attrs[results.NAN_MEANS] = "ε not in this attack's grid"
    assert results.has_nan(ds) == []
    # λ = 1 diverged in epoch 2: its NaN are recorded, not a fault
    ds["diverged"] = ("lam", [0, 0, 2])
    ds["loss"].loc[{"lam": 1.0, "epoch": [2, 3, 4]}] = np.nan
    ds["clean_acc"].loc[{"lam": 1.0}] = np.nan
    assert results.has_nan(ds) == []
    ds["loss"].loc[{"lam": 0.1, "epoch": 3}] = np.nan  # a run that did not diverge
    assert results.has_nan(ds) == ["loss"]


def test_open_sweep_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        results.open_sweep(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no result files"):
        results.open_sweep(tmp_path)
    one = results.save(run_ds(0.1, 0), tmp_path / "combined.nc")
    with pytest.raises(NotADirectoryError, match="is a file: open_sweep takes a sweep's folder; "
                                                 "read one result file with ck.results.load"):
        results.open_sweep(one)


def test_combined_strings_of_different_lengths_survive_a_round_trip(tmp_path):
    # each run file stores its string coordinate at its own width ("clip": <U4); combining
    # and saving again must not cut "weight_decay" to four characters
    for i, m in enumerate(["clip", "weight_decay"]):
        ds = results.stamp(xr.Dataset({"v": ((), float(i))}), {"method": m})
        results.save(ds, tmp_path / f"{m}.nc")
    combined = results.open_sweep(tmp_path)
    results.save(combined, tmp_path / "out" / "combined.nc")
    again = results.load(tmp_path / "out" / "combined.nc")
    assert sorted(again.method.values) == ["clip", "weight_decay"]


def test_an_attr_that_differs_between_runs_becomes_a_variable_not_dropped(tmp_path):
    # a sweep over methods: each run's method_config is its own; a failed run has none
    for m, pairs in (("clip", 64), ("weight_decay", None)):
        ds = results.stamp(xr.Dataset({"v": ((), 1.0)}), {"method": m})
        ds.attrs["method_config"] = json.dumps({"method": m, "pairs": pairs})
        ds.attrs["note"] = "the same in every run"
        results.save(ds, tmp_path / f"{m}.nc")
    results.record_failure(tmp_path / "bad.nc", {"method": "spectral"}, "ValueError: no")
    combined = results.open_sweep(tmp_path)

    assert "method_config" not in combined.attrs
    assert combined.attrs["note"] == "the same in every run"
    config = combined["method_config"]
    assert config.dims == ("method",) and "differs between the runs" in config.attrs["description"]
    assert json.loads(str(config.sel({"method": "clip"}).item()))["pairs"] == 64
    assert json.loads(str(config.sel({"method": "weight_decay"}).item()))["pairs"] is None
    assert str(config.sel({"method": "spectral"}).item()) == ""  # the failed run had none
    back = results.load(results.save(combined, tmp_path / "out" / "combined.nc"))
    xr.testing.assert_identical(back["method_config"], config)


def test_a_variable_attr_survives_where_the_runs_agree_and_is_dropped_where_they_differ(
        tmp_path):
    # e.g. robust_acc's attack_settings: one run's settings must never label another's numbers
    for lam, seed, steps in ((0.1, 0, 20), (1.0, 0, 20), (0.1, 1, 100)):
        ds = run_ds(lam, seed)
        ds["lip"].attrs["settings"] = json.dumps({"steps": steps})
        ds["loss"].attrs["settings"] = "the same in every run"
        results.save(ds, tmp_path / f"lam={lam}_seed={seed}.nc")
    combined = results.open_sweep(tmp_path)
    assert "settings" not in combined["lip"].attrs
    assert combined["loss"].attrs["settings"] == "the same in every run"
    agreeing = results.combine([results.load(tmp_path / f"lam={lam}_seed=0.nc")
                                for lam in (0.1, 1.0)])
    assert json.loads(agreeing["lip"].attrs["settings"]) == {"steps": 20}


def test_an_integer_variable_made_float_by_a_failed_point_is_saved_as_nan(tmp_path):
    # diverged is an integer in each run file; a failed point makes it NaN in the combination
    for lam in (0.1,):  # one finished point: the combination keeps its file's encoding
        ds = run_ds(lam, 0)
        ds["diverged"] = ("method", [0, 0])  # per method, as the regression notebook's
        results.save(ds.assign_coords(method=["wd", "clip"]),
                     tmp_path / "points" / f"lam={lam}_seed=0.nc")
    # the failed point's file comes first, so the combination takes diverged's encoding
    # (int64) from a finished one
    results.record_failure(tmp_path / "points" / "lam=0.01_seed=0.nc",
                           {"lam": 0.01, "seed": 0}, "ValueError: no")
    combined = results.open_sweep(tmp_path)
    assert combined["diverged"].dtype.kind == "f"
    back = results.load(results.save(combined, tmp_path / "combined.nc"))
    np.testing.assert_array_equal(back["diverged"].sel(seed=0, drop=True).values,
                                  [[np.nan, np.nan], [0.0, 0.0]])

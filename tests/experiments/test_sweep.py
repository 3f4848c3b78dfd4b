"""clipkit.sweep and `clipkit sweep`: checks before running, resume, failures, local pool and dask.

Each executed notebook starts a Jupyter kernel (1-2 s, more on a busy machine), so the
sweeps here are small and the 2x2 sweep is shared by several tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

import clipkit
from clipkit import cli
from clipkit.experiments import results, sweep
from clipkit.experiments.sweep.point import kernel_pythonpath

NOTEBOOKS = Path(__file__).parent / "notebooks"
QUADRATIC = NOTEBOOKS / "quadratic.ipynb"
PATH_NB = NOTEBOOKS / "quadratic_path.ipynb"


def write_spec(folder: Path, notebook: Path = QUADRATIC, name: str = "spec", **fields) -> Path:
    """A YAML spec in ``folder``; the notebook path is written relative to it."""
    spec = {"notebook": os.path.relpath(notebook, folder), **fields}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def expected_loss(ds: xr.Dataset) -> xr.DataArray:
    return (ds["lam"] * (ds["epoch"] + 1.0) ** 2 + ds["seed"]).transpose(*ds["loss"].dims)


# --------------------------------------------------------------------------- before running


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"grid": {"lam": [0.1], "sed": [0, 1]}}, "unknown parameter 'sed'"),
        ({"grid": {"lam": [0.1, "big"]}}, "'lam'.*'big'.*float"),
        ({"grid": {"lam": [[0.1], [1.0]]}}, r"grid.lam: \[0.1\] cannot be a grid value.*str, int"),
        ({"grid": {"lam": [{"a": 1}]}}, r"grid.lam: \{'a': 1\} cannot be a grid value"),
        ({"grid": {"seed": [0, 1.5]}}, "'seed'.*1.5.*int"),
        ({"fixed": {"seed": True}}, "'seed'.*True.*int"),
        ({"fixed": {"fail": 1}}, "'fail'.*bool"),
        ({"fixed": {"log_dir": 3}}, "'log_dir'.*str"),
        ({"grid": {"lam": [0.1, 1.0]}, "batch": ["lam"]}, "'lam' is batched.*list"),
        ({"grid": {"lam": 0.1}}, "grid.lam must be a non-empty list"),
        ({"grid": {"lam": [0.1]}, "fixed": {"lam": 1.0}}, "'lam' is in both"),
        ({"fixed": {"result_path": "x.nc"}}, "'result_path' is set by the sweep"),
        ({"grid": {"lam": [0.1]}, "gird": {}}, "unknown key.*'gird'"),
        ({"grid": {"lam": [0.1]}, "kernel": "no-such-kernel"}, "kernel 'no-such-kernel'"),
    ],
)
def test_bad_spec_fails_before_anything_runs(tmp_path, monkeypatch, fields, message):
    import papermill

    def no_kernel(*args, **kwargs):
        raise AssertionError("a notebook was executed")

    monkeypatch.setattr(papermill, "execute_notebook", no_kernel)
    spec = write_spec(tmp_path, **fields)
    out = tmp_path / "out"
    with pytest.raises(sweep.SweepError, match=message):
        sweep.run(spec, out=out, workers=2)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_missing_notebook_and_profile_are_named(tmp_path):
    spec = write_spec(tmp_path, notebook=tmp_path / "nowhere.ipynb", grid={"lam": [0.1]})
    with pytest.raises(sweep.SweepError, match="nowhere.ipynb.*does not exist"):
        sweep.run(spec, out=tmp_path / "out")
    spec = write_spec(tmp_path, grid={"lam": [0.1]}, profiles={"quick": {}})
    with pytest.raises(sweep.SweepError, match="unknown profile 'full'.*quick"):
        sweep.run(spec, profile="full", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_bad_parameter_and_exits_2(tmp_path, capsys):
    spec = write_spec(tmp_path, grid={"lam": [0.1], "seeds": [0]})
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"clipkit sweep: error: {spec}: unknown parameter 'seeds'" in err
    assert not (tmp_path / "out").exists()


def test_yaml_is_read_safely(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"notebook: {QUADRATIC}\nfixed:\n  lam: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(sweep.SweepError, match="spec.yaml: not valid YAML, line 3, column 8"):
        sweep.load_spec(spec)


def test_yaml_reads_an_exponent_without_a_dot_as_a_number(tmp_path):
    # PyYAML (YAML 1.1) would leave 1e-3 a string, and the float parameter would fail
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"notebook: {QUADRATIC}\ngrid:\n  lam: [1e-3, 1E+1, 2.5e-1]\n"
                    f"fixed:\n  sleep: 0e0\n")
    loaded, points = sweep.check(spec)
    assert loaded.grid["lam"] == [0.001, 10.0, 0.25] and loaded.fixed["sleep"] == 0.0
    assert [p.name for p in points] == ["lam=0.001", "lam=10.0", "lam=0.25"]


def test_a_yaml_syntax_error_names_the_file_and_the_place(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"notebook: {QUADRATIC}\ngrid: {{lam: [0.1, 1.0}}\n")
    assert cli.main(["sweep", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clipkit sweep: error: {spec}: not valid YAML, line 2, column 22: "
                          "expected ',' or ']', but got '}'")
    assert "<unicode string>" not in err
    spec.write_text("- just\n- a list\n")
    assert cli.main(["sweep", str(spec)]) == 2
    assert f"{spec}: must hold a mapping (notebook: ..." in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--workers", "two"]])
def test_a_bad_command_line_names_the_option_and_what_it_accepts(tmp_path, capsys, argv):
    for command in (["sweep", "spec.yaml"], ["reproduce"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*command, *argv])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert (f"clipkit {command[0]}: error: argument --workers: {argv[1]!r} is not a "
                "positive whole number (1, 2, ...)") in err


def test_parameters_reach_the_notebook_as_values_never_code():
    import ast

    from papermill.translators import translate_parameters

    evil = {"s": 'x"; import os; os.system("echo pwned") #\\', "t": "a\\\"\nb", "n": None,
            "d": {"k'": [1.5, True]}}
    source = translate_parameters("python3", "python", evil)
    tree = ast.parse(source)
    assert all(isinstance(node, ast.Assign) for node in tree.body)  # nothing but a = literal
    assert {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body} == evil


def test_dry_run_lists_points_and_writes_nothing(tmp_path, capsys):
    spec = write_spec(
        tmp_path,
        grid={"lam": [0.1, 1.0], "seed": [0, 1, 2]},
        fixed={"sleep": 0.5},
        profiles={"quick": {"grid": {"seed": [7]}, "fixed": {"lam": 0.5}}},
    )
    assert cli.main(["sweep", str(spec), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("lam=0.1_seed=0: ")
    assert lines[-1].startswith("6 points")
    summary = sweep.run(spec, profile="quick", dry_run=True, out=tmp_path / "o")
    assert [p.name for p in summary.points] == ["seed=7"]
    assert summary.points[0].params == {"lam": 0.5, "seed": 7, "sleep": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_point_names_are_deterministic_and_safe():
    assert sweep.point_name({"lam": 0.1, "seed": 0}) == "lam=0.1_seed=0"
    assert sweep.point_name({"lam": 1e-05}) == "lam=1e-05"
    odd = sweep.point_name({"method": "clip/v2 x"})
    assert odd.startswith("method=clip-v2-x-") and "/" not in odd
    assert odd == sweep.point_name({"method": "clip/v2 x"})
    assert odd != sweep.point_name({"method": "clip v2/x"})
    assert sweep.point_name({}) == "run"


def test_the_log_names_a_point_by_its_values_and_by_its_file_where_they_differ():
    from clipkit.experiments.sweep.runner import _describe
    from clipkit.experiments.sweep.spec import Point

    def point(swept):
        return Point(sweep.point_name(swept), swept, swept)

    assert _describe(point({"lam": 0.1, "seed": 0})) == "lam=0.1 seed=0"
    hashed = point({"method": "weight_decay", "seed": 0})
    assert _describe(hashed) == f"method=weight_decay seed=0 [{hashed.name}]"
    assert hashed.name.startswith("method=weight-decay_seed=0-")
    assert _describe(point({})) == "run"


@pytest.mark.parametrize(
    ("value", "declared", "ok"),
    [
        (1, "float", True), (1.5, "float", True), (True, "float", False),
        (1, "int", True), (1.0, "int", False), (False, "int", False),
        (True, "bool", True), (0, "bool", False), ("a", "str", True), (None, "str", False),
        (None, "Optional[str]", True), (None, "str | None", True),
        ([0.1, 1], "list[float]", True), ([0.1, "a"], "list[float]", False),
        ([1, 2], "List[int]", True), (0.1, "list[float]", False), ({"a": 1}, "dict", True),
        ("anything", "Any", True), ("x", "SomeClass", True),
    ],
)
def test_type_matches(value, declared, ok):
    assert sweep.type_matches(value, declared) is ok


def test_workers_get_their_own_gpu():
    assert [sweep.gpu_for_worker(i, ["0", "1"]) for i in range(3)] == ["0", "1", "0"]
    assert sweep.gpu_for_worker(0, []) is None


def test_kernels_import_this_clipkit(monkeypatch):
    import site

    root = Path(clipkit.__file__).resolve().parent.parent
    assert kernel_pythonpath() == str(root)  # a checkout: put it first for kernels
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", str(root)]))
    sweep.prepare_kernel_env()
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(root), "/elsewhere"]
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(root)])  # pip-installed
    assert kernel_pythonpath() is None


def test_a_sweep_turns_progress_bars_off_unless_its_spec_sets_them(tmp_path, monkeypatch):
    from clipkit.experiments.sweep import kernels

    regression = Path(clipkit.__file__).resolve().parents[1] / "notebooks" / "regression.ipynb"
    sent = []
    monkeypatch.setattr(kernels, "execute", lambda nb, out, params, **kw: (
        sent.append(dict(params)) or kernels.Execution(error="not run")))
    for fields, headless in (({"fixed": {"epochs": 2}}, (("progress", False),)),
                             ({"fixed": {"progress": True}}, ()),
                             ({"grid": {"progress": [True, False]}}, ())):
        spec, points = sweep.check({"notebook": str(regression), **fields})
        (tmp_path / "out" / sweep.POINTS_DIR).mkdir(parents=True, exist_ok=True)
        tasks = sweep.make_tasks(spec, points, tmp_path / "out")
        assert all(t.headless == headless for t in tasks)
        sweep.run_point(tasks[0])
        # the kernel gets progress = false unless the point sets it; the point is unchanged
        assert sent[-1]["progress"] is tasks[0].point.params.get("progress", False)
    spec, points = sweep.check({"notebook": str(QUADRATIC)})  # declares no progress
    assert sweep.make_tasks(spec, points, tmp_path / "out")[0].headless == ()


# --------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def local_2x2(tmp_path_factory):
    """The 2x2 sweep on a local pool of 2 workers, run once for several tests."""
    folder = tmp_path_factory.mktemp("local")
    spec = write_spec(folder, grid={"lam": [0.1, 1.0], "seed": [0, 1]}, fixed={"sleep": 0.0})
    summary = sweep.run(spec, workers=2, out=folder / "out", progress=False)
    return spec, summary


def test_sweep_2x2_with_2_workers_combines_into_one_dataset(local_2x2):
    _, summary = local_2x2
    ds = summary.dataset
    assert (len(summary.done), len(summary.skipped), len(summary.failed)) == (4, 0, 0)
    assert dict(ds.sizes) == {"lam": 2, "seed": 2, "epoch": 3}
    assert ds["loss"].dims == ("lam", "seed", "epoch")
    np.testing.assert_allclose(ds["lam"], [0.1, 1.0])
    np.testing.assert_array_equal(ds["seed"], [0, 1])
    np.testing.assert_allclose(ds["loss"], expected_loss(ds))
    assert (ds["status"] == "done").all() and (ds["wall_time"] > 0).all()
    on_disk = results.load(summary.combined)
    xr.testing.assert_identical(on_disk, results.load(summary.out / "combined.nc"))
    names = sorted(p.name for p in (summary.out / "points").iterdir())
    assert names == sorted(f"lam={lam}_seed={s}.{ext}" for lam in (0.1, 1.0) for s in (0, 1)
                           for ext in ("ipynb", "nc"))
    log = (summary.out / "sweep.log").read_text()
    assert log.count(" done   lam=") == 4 and "4 done, 0 skipped, 0 failed" in log
    umask = os.umask(0)
    os.umask(umask)
    for path in [*(summary.out / "points").iterdir(), summary.out / "combined.nc"]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path  # as any new file
    assert (summary.out / "points").stat().st_mode & 0o777 == 0o777 & ~umask
    done = results.load(summary.out / "points" / "lam=0.1_seed=0.nc")
    assert done.attrs["attempts"] == 1 and done.attrs["kernel_retries"] == "[]"


def test_a_finished_sweep_is_not_recomputed(local_2x2):
    spec, first = local_2x2
    points = first.out / "points"
    mtimes = {p.name: p.stat().st_mtime_ns for p in points.iterdir()}
    again = sweep.run(spec, workers=2, out=first.out, progress=False)
    assert sorted(again.skipped) == sorted(first.done) and not again.done
    assert {p.name: p.stat().st_mtime_ns for p in points.iterdir()} == mtimes
    xr.testing.assert_identical(again.dataset, first.dataset)


def test_an_unreadable_result_is_reported_moved_aside_and_recomputed(local_2x2, tmp_path):
    spec, first = local_2x2
    out = tmp_path / "copy"
    shutil.copytree(first.out, out)
    points = out / "points"
    truncated = (points / "lam=0.1_seed=1.nc").read_bytes()[:1500]
    (points / "lam=0.1_seed=1.nc").write_bytes(truncated)
    (points / "lam=1.0_seed=0.nc").write_bytes(b"not netCDF at all")
    summary = sweep.run(spec, workers=2, out=out, progress=False)
    assert sorted(summary.done) == ["lam=0.1_seed=1", "lam=1.0_seed=0"]
    assert sorted(summary.unreadable) == ["lam=0.1_seed=1", "lam=1.0_seed=0"]
    assert "2 unreadable result(s) moved aside" in summary.line()
    moved = sorted(points.glob("*.nc.unreadable-*"))
    assert [p.name.split(".nc.")[0] for p in moved] == ["lam=0.1_seed=1", "lam=1.0_seed=0"]
    assert moved[0].read_bytes() == truncated  # kept as it was, for inspection
    log = (out / "sweep.log").read_text()
    assert log.count("UNREADABLE result") == 2 and "moved to lam=0.1_seed=1.nc.unreadable-" in log
    xr.testing.assert_identical(summary.dataset.drop_vars("wall_time"),
                                first.dataset.drop_vars("wall_time"))


def test_results_of_other_parameters_are_moved_aside_never_overwritten(local_2x2, tmp_path):
    spec, first = local_2x2
    out = tmp_path / "copy"
    shutil.copytree(first.out, out)
    points = out / "points"
    before = (points / "lam=0.1_seed=0.nc").read_bytes()
    notebook_before = (points / "lam=0.1_seed=0.ipynb").read_bytes()
    changed = write_spec(tmp_path, name="changed", grid={"lam": [0.1, 1.0], "seed": [0]},
                         fixed={"sleep": 0.01})
    summary = sweep.run(changed, workers=2, out=out, progress=False)
    assert sorted(summary.done) == ["lam=0.1_seed=0", "lam=1.0_seed=0"] and not summary.skipped
    assert sorted(summary.superseded) == ["lam=0.1_seed=0", "lam=1.0_seed=0"]
    assert "2 result(s) of other parameters moved aside" in summary.line()
    moved = sorted(points.glob("lam=0.1_seed=0.nc.superseded-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == before  # the old result, untouched
    # and the executed notebook that computed it, under the same suffix
    old_notebook = moved[0].with_name(moved[0].name.replace(".nc.", ".ipynb.", 1))
    assert old_notebook.read_bytes() == notebook_before
    assert (points / "lam=0.1_seed=0.ipynb").read_bytes() != notebook_before  # the new run's
    log = (out / "sweep.log").read_text()
    assert log.count("OTHER PARAMETERS") == 2 and "sleep: 0.0 -> 0.01" in log
    configs = [json.loads(c) for c in summary.dataset["config"].values.ravel()]
    assert [c["sleep"] for c in configs] == [0.01, 0.01]
    # points/ now holds runs of both settings: open_sweep names the difference, not xarray
    with pytest.raises(ValueError, match=r"different settings \(sleep=0\.0(1)? in .*, 0\.0(1)? in"):
        results.open_sweep(out)


def test_a_point_computed_by_another_notebook_is_not_taken_as_done(local_2x2, tmp_path):
    spec, first = local_2x2
    out = tmp_path / "copy"
    shutil.copytree(first.out, out)
    other = tmp_path / "other.ipynb"
    shutil.copy(QUADRATIC, other)
    changed = write_spec(tmp_path, notebook=other, name="other",
                         grid={"lam": [0.1], "seed": [0]}, fixed={"sleep": 0.0})
    summary = sweep.run(changed, workers=1, out=out, progress=False)
    assert summary.done == ["lam=0.1_seed=0"] and not summary.skipped
    assert "notebook: quadratic.ipynb -> other.ipynb" in summary.superseded["lam=0.1_seed=0"]
    assert results.load(out / "points" / "lam=0.1_seed=0.nc").attrs["sweep_notebook"] == \
        "other.ipynb"
    again = sweep.run(changed, workers=1, out=out, progress=False)
    assert again.skipped == ["lam=0.1_seed=0"] and not again.done


def test_an_edited_parameters_cell_is_another_run_and_so_is_its_revert(tmp_path):
    """A spec takes every parameter it does not set from the notebook's parameters cell,
    which JupyterLab saves as the user edits it: a finished point ran with the old defaults,
    so it is not taken as done (a sweep reused it, and again after the edit was undone)."""
    import nbformat

    notebook = tmp_path / "quadratic.ipynb"
    shutil.copy(QUADRATIC, notebook)
    spec = write_spec(tmp_path, notebook=notebook, grid={"lam": [0.1]})
    out = tmp_path / "out"

    def set_seed_default(value: int) -> None:
        nb = nbformat.read(notebook, as_version=4)
        (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        cell.source = re.sub(r"seed: int = \d+", f"seed: int = {value}", cell.source)
        nbformat.write(nb, notebook)

    first = sweep.run(spec, workers=1, out=out, progress=False)
    assert first.done == ["lam=0.1"]
    assert json.loads(results.load(out / "points" / "lam=0.1.nc").attrs["notebook_defaults"]) \
        ["seed"] == 0
    assert sweep.run(spec, workers=1, out=out, progress=False).skipped == ["lam=0.1"]
    set_seed_default(5)
    edited = sweep.run(spec, workers=1, out=out, progress=False)
    assert edited.done == ["lam=0.1"] and not edited.skipped
    assert "notebook default seed: 0 -> 5" in edited.superseded["lam=0.1"]
    assert float(edited.dataset["loss"].isel(epoch=0).squeeze()) == pytest.approx(0.1 + 5)
    set_seed_default(0)  # undone: the seed-5 result is not the point's either
    reverted = sweep.run(spec, workers=1, out=out, progress=False)
    assert reverted.done == ["lam=0.1"]
    assert "notebook default seed: 5 -> 0" in reverted.superseded["lam=0.1"]
    # a result written before the defaults were recorded is taken as before
    old = results.load(out / "points" / "lam=0.1.nc")
    del old.attrs["notebook_defaults"]
    results.save(old, out / "points" / "lam=0.1.nc")
    set_seed_default(7)
    assert sweep.run(spec, workers=1, out=out, progress=False).skipped == ["lam=0.1"]


def test_the_cli_names_a_combined_file_it_cannot_write(local_2x2, tmp_path, capsys):
    spec, first = local_2x2
    out = tmp_path / "copy"
    shutil.copytree(first.out, out)
    (out / "combined.nc").unlink()
    (out / "combined.nc").mkdir()  # every point is done: only the combined file fails
    code = cli.main(["sweep", str(spec), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "clipkit sweep: error: result path" in err and "must name a file" in err
    assert "Traceback" not in err


def test_two_runs_of_one_point_are_named_when_combined(local_2x2):
    _, first = local_2x2
    run = results.load(first.out / "points" / "lam=0.1_seed=0.nc")
    changed = run.assign(loss=run["loss"] + 1.0)
    with pytest.raises(ValueError, match=r"a\.nc and b\.nc are runs of the same grid point "
                                         r"\('lam'=0\.1, 'seed'=0\)|a\.nc and b\.nc are runs "
                                         r"of the same grid point \(lam=0\.1, seed=0\)"):
        results.combine([run, changed], ["a.nc", "b.nc"])


def test_dask_local_cluster_gives_the_same_dataset(local_2x2, tmp_path):
    from dask.distributed import LocalCluster

    spec, local = local_2x2
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        remote = sweep.run(spec, scheduler=cluster.scheduler_address,  # as --scheduler does
                           out=tmp_path / "dask", progress=False)
    assert len(remote.done) == 4
    per_run = ["wall_time"]  # the only thing that may differ: how long each point took
    xr.testing.assert_identical(remote.dataset.drop_vars(per_run),
                                local.dataset.drop_vars(per_run))


def test_failing_points_are_recorded_and_the_others_complete(tmp_path):
    spec = write_spec(tmp_path, grid={"fail": [False, True], "nan": [False, True]},
                      fixed={"lam": 0.5})
    summary = sweep.run(spec, workers=2, out=tmp_path / "out", progress=False)
    assert summary.done == ["fail=False_nan=False"]
    assert len(summary.failed) == 3
    ds = results.open_sweep(tmp_path / "out")
    status, error = ds["status"], ds["error"]
    assert status.sel(fail=False, nan=False) == "done"
    assert status.sel(fail=True, nan=False) == "failed"
    raised = str(error.sel(fail=True, nan=True).item())
    assert "RuntimeError: deliberate failure at lam=0.5" in raised
    assert str(error.sel(fail=False, nan=True).item()) == (
        "NaN in loss, final; where NaN is expected, set allow_nan: true in the sweep's spec "
        "(or give the variable a 'nan_means' attribute saying what NaN means there)")
    assert dict(ds.sizes) == {"fail": 2, "nan": 2, "epoch": 3}
    assert float(ds["lam"]) == 0.5  # fixed: a scalar coordinate, not a dimension
    np.testing.assert_allclose(ds["loss"].sel(fail=False, nan=False), [0.5, 2.0, 4.5])
    assert np.isnan(ds["loss"].sel(fail=True)).all()
    xr.testing.assert_identical(summary.dataset["status"], ds["status"])
    for name in summary.failed:  # a cell that raises, or a NaN, is not run again
        assert results.load(tmp_path / "out" / "points" / f"{name}.nc").attrs["attempts"] == 1
    assert not summary.retried


def test_a_point_over_its_timeout_is_failed(tmp_path):
    # the cell timeout leaves room for importing numpy/xarray in a kernel on a loaded
    # machine; the sleep is so long that finishing at all proves the timeout worked
    spec = write_spec(tmp_path, grid={"sleep": [0.0, 3600.0]}, timeout=20)
    start = time.perf_counter()
    summary = sweep.run(spec, workers=2, out=tmp_path / "out", progress=False)
    assert time.perf_counter() - start < 1800
    assert summary.done == ["sleep=0.0"]
    assert "timed out" in summary.failed["sleep=3600.0"].lower()
    timed_out = results.load(tmp_path / "out" / "points" / "sleep=3600.0.nc")
    assert timed_out.attrs["attempts"] == 1  # a cell timeout is never retried


def test_a_batched_dimension_runs_inside_each_notebook(tmp_path):
    spec = write_spec(tmp_path, notebook=PATH_NB, grid={"lam": [0.1, 0.5, 1.0], "seed": [0, 1]},
                      batch=["lam"])
    summary = sweep.run(spec, workers=2, out=tmp_path / "out", progress=False)
    assert sorted(p.name for p in summary.points) == ["seed=0", "seed=1"]
    ds = summary.dataset
    assert dict(ds.sizes) == {"seed": 2, "lam": 3, "epoch": 3}
    np.testing.assert_allclose(ds["loss"], expected_loss(ds))


def test_a_swept_value_that_is_a_dimension_of_the_result_fails_its_point_by_name(tmp_path):
    """A notebook that returns its seed as an axis (as fit_path does) can not be combined
    by it: each point fails with what to do, instead of every point finishing and the
    combine failing after them."""
    spec = write_spec(tmp_path, notebook=NOTEBOOKS / "seed_axis.ipynb",
                      grid={"seed": [0, 1]})
    summary = sweep.run(spec, workers=2, out=tmp_path / "out", progress=False)
    assert summary.done == [] and sorted(summary.failed) == ["seed=0", "seed=1"]
    assert ("the grid sweeps 'seed', but the result has 'seed' as a dimension (of length 1)"
            in summary.failed["seed=0"])
    assert "list 'seed' in the spec's batch" in summary.failed["seed=0"]
    assert set(summary.dataset.status.values.ravel()) == {"failed"}  # failure records only


def test_a_dotted_name_sweeps_one_key_of_a_mapping_parameter(tmp_path):
    spec = write_spec(tmp_path, notebook=NOTEBOOKS / "settings.ipynb",
                      grid={"settings.scale": [1.0, 2.0]}, fixed={"settings": {"offset": 5}})
    summary = sweep.run(spec, workers=2, out=tmp_path / "out", progress=False)
    assert sorted(summary.done) == ["settings.scale=1.0", "settings.scale=2.0"]
    ds = summary.dataset
    assert ds["value"].dims == ("settings.scale",)
    np.testing.assert_allclose(ds["value"].sel({"settings.scale": 2.0}), 25.0)  # 2·10 + 5
    used = json.loads(str(ds["settings_used"].sel({"settings.scale": 1.0}).item()))
    assert used == {"offset": 5, "scale": 1.0}  # the fixed key kept, the swept one set
    point = results.load(summary.out / "points" / "settings.scale=2.0.nc")
    config = json.loads(point.attrs["config"])  # as the notebook stamped it
    assert config["settings"] == {"offset": 5, "scale": 2.0}
    # the result file it ended in, not the temporary NAME.nc.part the notebook wrote
    assert config["result_path"] == str(summary.out / "points" / "settings.scale=2.0.nc")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"grid": {"count.scale": [1]}},
         r"'count.scale' sets a key inside parameter 'count', which notebook 'settings.ipynb' "
         r"declares as int, not a mapping"),
        ({"grid": {"setings.scale": [1]}}, r"unknown parameter 'setings'"),
        ({"grid": {"settings.scale": [1, 2]}, "batch": ["settings.scale"]},
         r"'settings.scale' cannot be batched"),
        ({"grid": {"settings.a.b": [1]}, "fixed": {"settings": {"a": 3}}},
         r"'settings.a.b' sets a key inside 'a', which is 3, not a mapping"),
    ],
)
def test_a_bad_dotted_name_is_refused_before_anything_runs(tmp_path, fields, message):
    spec = write_spec(tmp_path, notebook=NOTEBOOKS / "settings.ipynb", **fields)
    with pytest.raises(sweep.SweepError, match=message):
        sweep.run(spec, out=tmp_path / "out", dry_run=True)


CHECKED = NOTEBOOKS / "checked.ipynb"


@pytest.mark.parametrize("dry_run", [True, False])
def test_values_the_notebooks_checks_reject_stop_the_sweep_before_anything_runs(
        tmp_path, capsys, dry_run):
    import torch

    spec = write_spec(tmp_path, notebook=CHECKED,
                      grid={"lam": [0.1, -1.0], "settings.scale": [1.0, 3.0]})
    threads = torch.get_num_threads()
    with pytest.raises(sweep.SweepError) as info:
        sweep.run(spec, out=tmp_path / "out", dry_run=dry_run, progress=False)
    message = str(info.value)
    assert "3 of 4 points have values that notebook 'checked.ipynb' rejects" in message
    assert "lam=0.1_settings.scale=1.0" not in message  # the good point
    assert ("lam=-1.0_settings.scale=1.0: ValueError: lam must be >= 0, got -1.0"
            in message)
    assert ("lam=0.1_settings.scale=3.0: ValueError: settings.scale must be one of "
            "(1.0, 2.0), got 3.0" in message)
    assert not (tmp_path / "out").exists()
    assert "checking lam" not in capsys.readouterr().out  # the check cells' output
    assert torch.get_num_threads() == threads  # the check cell set 1


def test_values_the_notebooks_checks_accept_run(tmp_path):
    spec = write_spec(tmp_path, notebook=CHECKED, grid={"lam": [0.5]},
                      fixed={"settings": {"scale": 2.0}})
    summary = sweep.run(spec, out=tmp_path / "out", workers=1, progress=False, verbose=False)
    assert float(summary.dataset["value"].squeeze()) == 1.0


def test_a_notebook_without_check_cells_is_checked_by_type_only(tmp_path):
    from clipkit.experiments.sweep import checks

    assert checks.check_cells(QUADRATIC) == []
    assert [tag for tag, _ in checks.check_cells(CHECKED)] == ["checks", "parameters", "checks"]


def test_a_combine_error_is_logged_and_the_point_files_kept(tmp_path, monkeypatch):
    spec = write_spec(tmp_path, grid={"lam": [0.1], "seed": [0]})

    def disagree(*args, **kwargs):
        raise ValueError("the runs disagree")

    monkeypatch.setattr(results, "combine", disagree)
    with pytest.raises(ValueError, match="the runs disagree"):
        sweep.run(spec, workers=1, out=tmp_path / "out", progress=False)
    log = (tmp_path / "out" / "sweep.log").read_text()
    assert "the point files are kept, but no combined.nc: the runs disagree" in log
    assert results.status_of(tmp_path / "out" / "points" / "lam=0.1_seed=0.nc") == "done"


def _env_with_clipkit() -> dict[str, str]:
    root = str(Path(clipkit.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _done(points: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in points.glob("*.nc")
            if results.status_of(p) == "done"}


def test_an_interrupted_sweep_resumes_without_recomputing(tmp_path):
    counts = tmp_path / "counts"
    counts.mkdir()
    spec = write_spec(tmp_path, grid={"lam": [0.1, 1.0], "seed": [0, 1, 2]},
                      fixed={"sleep": 1.0, "log_dir": str(counts)})
    out = tmp_path / "out"
    (tmp_path / "t").mkdir()  # its temporary files: a killed runner cannot remove them
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipkit", "sweep", str(spec), "--workers", "2",
         "--out", str(out), "--no-progress"],
        env={**_env_with_clipkit(), "TMPDIR": str(tmp_path / "t")}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not _done(out / "points") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner, its workers (kernels follow within 1 s)
    proc.wait()
    done_before = _done(out / "points")
    assert 1 <= len(done_before) < 6, "kill the sweep while points still run"
    for f in (out / "points").glob("*.nc"):  # no half-written result
        results.load(f)
    time.sleep(1.5)  # let orphaned kernels notice their parent is gone

    summary = sweep.run(spec, workers=2, out=out, progress=False)
    assert set(done_before) <= {f"{n}.nc" for n in summary.skipped}
    assert len(summary.skipped) + len(summary.done) == 6 and not summary.failed
    after = _done(out / "points")
    assert {k: after[k] for k in done_before} == done_before  # untouched
    for name in done_before:  # each finished point started exactly once
        assert (counts / name.replace(".nc", ".count")).read_text().count("started") == 1
    ds = summary.dataset
    assert dict(ds.sizes) == {"lam": 2, "seed": 3, "epoch": 3}
    assert (ds["status"] == "done").all()
    np.testing.assert_allclose(ds["loss"], expected_loss(ds))
    assert not list((out / "points").glob(".*.tmp")) + list((out / "points").glob("*.part"))


def test_a_broken_pool_records_no_failure_for_points_it_never_finished(tmp_path):
    # a worker killed (or out of memory) breaks the whole local pool: every pending point
    # gets BrokenProcessPool, the queued ones never started; none is written as failed
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool
    from types import SimpleNamespace

    from clipkit.experiments.sweep import runner
    point = SimpleNamespace(name="lam=1", swept={"lam": 1.0}, params={"lam": 1.0})
    task = SimpleNamespace(point=point, result=str(tmp_path / "lam=1.nc"))
    broken = Future()
    broken.set_exception(BrokenProcessPool("A process in the process pool was terminated"))
    outcome = runner._outcome(task, broken)
    assert outcome.status == results.STATUS_FAILED and outcome.error == runner.POOL_BROKE
    assert not (tmp_path / "lam=1.nc").exists()  # "missing" when combined; a rerun runs it
    crashed = Future()  # any other error of the worker is the point's recorded failure
    crashed.set_exception(RuntimeError("boom"))
    assert "boom" in runner._outcome(task, crashed).error
    assert results.status_of(tmp_path / "lam=1.nc") == results.STATUS_FAILED

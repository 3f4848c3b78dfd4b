"""Nothing fails spuriously, nothing is lost: `clipkit reproduce` and sweeps under faults.

Ctrl-C and SIGKILL in the middle of `clipkit reproduce` and a rerun; relative paths given
from another folder; two sweeps on one output folder; a result that cannot be written; a
notebook that writes no result. Each runs tiny test notebooks (a kernel start is most of
the cost), so the paper folders here hold one or two small specs.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import clipkit
from clipkit import cli
from clipkit.experiments import results, sweep

NOTEBOOKS = Path(__file__).parent / "notebooks"
QUADRATIC = NOTEBOOKS / "quadratic.ipynb"
ROOT = Path(clipkit.__file__).resolve().parent.parent


def env_with_clipkit(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def write_yaml(path: Path, spec: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**spec, "profiles": {"quick": {}}}))  # reproduce's profile
    return path


def start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """`python -m clipkit ARGS` in its own session (a Ctrl-C reaches it and its workers).

    SIGINT is reset to its default first: a shell starts background jobs (`make test &`)
    with SIGINT ignored, children inherit that, and Python then never raises
    KeyboardInterrupt, so the Ctrl-C below would be lost (seen: the run finished instead).
    """
    return subprocess.Popen([sys.executable, "-m", "clipkit", *args], cwd=cwd,
                            env=env_with_clipkit(**env), start_new_session=True,
                            preexec_fn=_default_sigint,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _default_sigint() -> None:
    # (and SIGHUP, SIGTERM: under nohup SIGHUP arrives ignored, and clipkit keeps a signal
    # that was ignored when it started)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def done_files(runs: Path) -> dict[str, int]:
    """The finished result files under ``runs`` and their modification times."""
    return {str(p.relative_to(runs)): p.stat().st_mtime_ns for p in runs.rglob("points/*.nc")
            if results.status_of(p) == "done"}


def starts(counts: Path, done: dict[str, int]) -> dict[str, int]:
    """How often each finished point's notebook has started (quadratic.ipynb's log_dir)."""
    return {name: (counts / Path(name).name.replace(".nc", ".count")).read_text()
            .count("started") for name in done}


def wait_until(condition, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"finished before the fault: {proc.communicate()}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.1)


def assert_every_result_readable(runs: Path) -> None:
    for path in runs.rglob("*.nc"):
        assert results.read_error(path) == "", path


# --------------------------------------------------------------------------- Ctrl-C, SIGKILL


def test_reproduce_survives_ctrl_c_and_sigkill_and_resumes(tmp_path):
    counts = tmp_path / "counts"
    counts.mkdir()
    paper = tmp_path / "paper"
    quad = os.path.relpath(QUADRATIC, paper)
    # 6 points on 2 workers: after a fault at the k-th finished point (k <= 3: at most two
    # finish at once) and one more, at most 5 are done, so the last run has work left
    write_yaml(paper / "first.yaml", {"notebook": quad, "grid": {"lam": [0.1, 1.0],
               "seed": [0, 1]}, "fixed": {"sleep": 0.5, "log_dir": str(counts)}})
    write_yaml(paper / "second.yaml", {"notebook": quad, "grid": {"lam": [2.0],
               "seed": [0, 1]}, "fixed": {"sleep": 0.5, "log_dir": str(counts)}})
    runs = tmp_path / "runs"
    args = ["reproduce", "--paper", str(paper), "--runs", str(runs), "--workers", "2",
            "--no-progress"]

    # 1. Ctrl-C (SIGINT to the command and its workers) once a point has finished
    tmp = tmp_path / "t"
    tmp.mkdir()
    proc = start(args, tmp_path, TMPDIR=str(tmp))
    wait_until(lambda: done_files(runs), proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == cli.EXIT_INTERRUPTED, err
    assert "interrupted" in err and "Traceback" not in err
    after_int = done_files(runs)
    starts_int = starts(counts, after_int)
    assert 1 <= len(after_int) <= 3
    assert not (paper / "README.md").exists()  # no report from a partial run
    assert_every_result_readable(runs)
    assert not list(tmp.glob("clipkit-*"))  # the kernels' socket folders are gone
    # combined.nc shows the points finished before the Ctrl-C (the workers are stopped
    # before it is written), the others missing
    combined = results.load(runs / "first" / results.COMBINED_NAME)
    assert int((combined["status"] == "done").sum()) == len(after_int)
    assert set(combined["status"].values.ravel()) <= {"done", "missing"}

    # 2. SIGKILL (the command and its workers; kernels follow within a second) after one more
    proc = start(args, tmp_path, TMPDIR=str(tmp))
    wait_until(lambda: len(done_files(runs)) > len(after_int), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()  # (its socket folder stays in tmp: a killed runner cannot remove it)
    after_kill = done_files(runs)
    starts_kill = starts(counts, after_kill)
    assert {k: after_kill[k] for k in after_int} == after_int  # not recomputed
    assert {k: starts_kill[k] for k in after_int} == starts_int  # not even started
    assert len(after_kill) < 6 and not (paper / "README.md").exists()
    assert_every_result_readable(runs)
    time.sleep(1.5)  # let orphaned kernels notice their parent is gone

    # 3. the rerun finishes the rest and builds the report, once
    proc = start(args, tmp_path, TMPDIR=str(tmp))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert out.count("report:") == 1 and "2 sweeps" in out
    final = done_files(runs)
    assert len(final) == 6
    assert {k: final[k] for k in after_kill} == after_kill  # finished points were skipped
    assert {k: v for k, v in starts(counts, final).items() if k in after_kill} == starts_kill
    assert (paper / "README.md").read_text().startswith("# Reproduction report")
    assert_every_result_readable(runs)
    leftovers = [*runs.rglob(".*.tmp"), *runs.rglob("*.part"), *paper.glob(".report-*")]
    assert not leftovers
    for name in ("first", "second"):
        ds = results.load(runs / name / results.COMBINED_NAME)
        assert (ds["status"] == "done").all()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_to_the_sweep_alone_stops_its_workers_as_ctrl_c_does(tmp_path,
                                                                                signame):
    # `kill PID` (a script, `timeout`, a batch system) or a closed terminal reaches the
    # command only, not its workers: they must not go on computing points unsupervised
    counts = tmp_path / "counts"
    counts.mkdir()
    spec = write_yaml(tmp_path / "spec.yaml", {
        "notebook": str(QUADRATIC), "grid": {"lam": [0.1, 1.0, 2.0], "seed": [0, 1]},
        "fixed": {"sleep": 1.0, "log_dir": str(counts)}})
    runs = tmp_path / "runs"
    args = ["sweep", str(spec), "--out", str(runs), "--workers", "2", "--no-progress"]
    proc = start(args, tmp_path)
    wait_until(lambda: done_files(runs), proc)
    os.kill(proc.pid, getattr(signal, signame))  # the command's own process only
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == cli.EXIT_INTERRUPTED, err
    assert "interrupted" in err and "Traceback" not in err
    stopped = done_files(runs)
    started = sum(f.read_text().count("started") for f in counts.iterdir())
    time.sleep(3)  # a point takes 1 s: a worker left running would finish more by now
    assert done_files(runs) == stopped
    assert sum(f.read_text().count("started") for f in counts.iterdir()) == started
    assert "interrupted" in (runs / "sweep.log").read_text()
    combined = results.load(runs / results.COMBINED_NAME)
    assert int((combined["status"] == "done").sum()) == len(stopped) < 6
    # and the same command resumes: the finished points are not run again
    proc = start(args, tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    final = done_files(runs)
    assert len(final) == 6 and {k: final[k] for k in stopped} == stopped


# --------------------------------------------------------------------------- relative paths


def test_relative_paths_mean_the_folder_the_user_started_in(tmp_path):
    """`CLIPKIT_DATA=data clipkit reproduce --paper paper --runs runs` from tmp/work."""
    work = tmp_path / "work"
    for folder, text in (("data", "from CLIPKIT_DATA"), ("specdata", "from the spec")):
        (work / folder).mkdir(parents=True)
        (work / folder / "marker.txt").write_text(text)
    paper = work / "paper"
    write_yaml(paper / "paths.yaml", {
        "notebook": os.path.relpath(NOTEBOOKS / "paths.ipynb", paper),
        "grid": {"data_root": ["", "../specdata"]},  # relative to the spec file
    })
    proc = start(["reproduce", "--paper", "paper", "--runs", "runs", "--workers", "2",
                  "--no-progress"], work, CLIPKIT_DATA="data")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err + out
    points = work / "runs" / "paths" / "points"
    seen = {}
    for path in points.glob("*.nc"):
        ds = results.load(path)
        config = json.loads(ds.attrs["config"])  # what the notebook got: absolute paths
        assert json.loads(ds.attrs["sweep_point"]) == {"data_root": config["data_root"]}
        seen[config["data_root"]] = (str(ds["marker"].item()), ds.attrs["root_seen"])
        assert json.loads(ds.attrs["environment"]) == {"CLIPKIT_DATA": str(work / "data")}
        assert ds.attrs["kernel_cwd"] == str(NOTEBOOKS)  # the kernel runs beside its notebook
    assert seen == {"": ("from CLIPKIT_DATA", str(work / "data")),
                    str(work / "specdata"): ("from the spec", str(work / "specdata"))}
    assert (paper / "README.md").is_file()


def test_path_parameters_are_resolved_against_the_spec_or_the_current_folder(tmp_path,
                                                                          monkeypatch, capsys):
    spec = write_yaml(tmp_path / "specs" / "s.yaml", {
        "notebook": os.path.relpath(QUADRATIC, tmp_path / "specs"),
        "grid": {"lam": [0.1]}, "fixed": {"log_dir": "../logs"}, "out": "../out"})
    loaded = sweep.load_spec(spec)
    assert loaded.fixed["log_dir"] == str(tmp_path / "logs")
    assert loaded.out == tmp_path / "out"
    monkeypatch.chdir(tmp_path / "specs")
    mapping = sweep.load_spec({"notebook": str(QUADRATIC), "fixed": {"log_dir": "logs",
                               "lam": 0.5, "result_dir": "s3://bucket/x"}})
    assert mapping.fixed == {"log_dir": str(tmp_path / "specs" / "logs"), "lam": 0.5,
                             "result_dir": "s3://bucket/x"}
    assert cli.main(["sweep", str(spec), "--dry-run", "--out", "rel"]) == 0  # from specs/
    assert f"1 points -> {tmp_path / 'specs' / 'rel'}" in capsys.readouterr().out
    assert [sweep.is_path_parameter(n) for n in ("data_root", "path", "sweep_dir", "dirt",
                                                 "lam", "rootless")] == [
        True, True, True, False, False, False]


# --------------------------------------------------------------------------- one folder, one sweep


def test_a_second_sweep_on_the_same_folder_is_refused(tmp_path, capsys):
    spec = write_yaml(tmp_path / "s.yaml", {"notebook": str(QUADRATIC),
                                            "grid": {"seed": [0, 1]}, "fixed": {"sleep": 4.0}})
    out = tmp_path / "out"
    first = start(["sweep", str(spec), "--workers", "2", "--out", str(out), "--no-progress"],
                  tmp_path)
    wait_until(lambda: (out / "sweep.log").is_file(), first)
    listing = sorted(p.name for p in (out / "points").iterdir())
    with pytest.raises(sweep.SweepError, match="is in use by another sweep"):
        sweep.run(spec, workers=1, out=out, progress=False)
    assert cli.main(["sweep", str(spec), "--out", str(out)]) == 2
    assert f"clipkit sweep: error: output folder '{out}' is in use" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "points").iterdir()) == listing
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    log = (out / "sweep.log").read_text()
    assert log.count("sweep s: 2 points, 2 to run") == 1  # only the first one ran
    assert log.count(" done   seed=") == 2
    again = sweep.run(spec, workers=1, out=out, progress=False)  # the folder is free again
    assert sorted(again.skipped) == ["seed=0", "seed=1"]


# --------------------------------------------------------------------------- results not written


def one_task(tmp_path: Path, **fixed) -> sweep.Task:
    spec, points = sweep.check({"notebook": str(QUADRATIC), "grid": {"seed": [4]},
                                "fixed": fixed})
    (tmp_path / "out" / sweep.POINTS_DIR).mkdir(parents=True)  # as sweep.run makes it
    return sweep.make_tasks(spec, points, tmp_path / "out")[0]


@pytest.mark.parametrize(("err", "reason"), [(errno.ENOSPC, "No space left on device"),
                                             (errno.EACCES, "Permission denied")])
def test_a_result_that_cannot_be_written_fails_its_point_cleanly(tmp_path, monkeypatch,
                                                                 err, reason):
    import xarray as xr

    task = one_task(tmp_path)
    real = xr.Dataset.to_netcdf

    def fail_outside_the_kernel(self, target, *args, **kwargs):
        if str(target).startswith(str(Path(task.result).parent / ".")):  # the runner's files
            Path(target).write_bytes(b"\x89HDF\r\n half a file")
            raise OSError(err, os.strerror(err))
        return real(self, target, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_netcdf", fail_outside_the_kernel)
    outcome = sweep.run_point(task)  # what a worker runs; the kernel writes its .part itself
    assert outcome.status == "failed"
    assert outcome.error.startswith(f"[Errno {err}] cannot write result file "
                                    f"'{task.result}': {reason}")
    assert "the failure record could not be written either" not in outcome.error  # same cause
    left = sorted(p.name for p in Path(task.result).parent.iterdir())
    assert left == ["seed=4.ipynb"]  # the executed notebook; no partial, temporary or .part


def test_an_unwritable_output_folder_is_a_clear_error(tmp_path, capsys):
    spec = write_yaml(tmp_path / "s.yaml", {"notebook": str(QUADRATIC), "grid": {"seed": [0]}})
    (tmp_path / "file").write_text("not a folder")
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err
    assert f"clipkit sweep: error: cannot create output folder '{tmp_path}/file/out/points'" in err


def test_a_notebook_that_writes_no_result_fails_its_point(tmp_path):
    task = one_task(tmp_path, write_result=False)
    outcome = sweep.run_point(task)
    assert outcome.status == "failed"
    assert outcome.error.startswith("the notebook wrote no result file; it must save its "
                                    "Dataset to its 'result_path' parameter")
    ds = results.load(task.result)
    assert ds.attrs["status"] == "failed" and ds.attrs["attempts"] == 1
    assert ds.attrs["error"] == outcome.error


# --------------------------------------------------------------------------- user errors


def test_reproduce_checks_every_spec_and_option_before_running(tmp_path, capsys):
    paper = tmp_path / "paper"
    write_yaml(paper / "first.yaml", {"notebook": str(QUADRATIC), "grid": {"seed": [0]}})
    runs = tmp_path / "runs"
    base = ["reproduce", "--paper", str(paper), "--runs", str(runs)]
    cases = [
        (["--only", "first", "nope"], "--only: unknown sweep 'nope'; the sweeps of"),
        (["--profile", "full"], f"{paper / 'first.yaml'}: unknown profile 'full'; this spec "
                                "has: quick"),
        (["--paper", str(tmp_path / "nowhere")], "is not a folder"),
    ]
    for extra, message in cases:
        assert cli.main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("clipkit reproduce: error: ") and message in err, err
    (paper / "second.yaml").write_text("notebook: x.ipynb\ngrid: {seed: [0}\n")
    assert cli.main(base) == 2  # first.yaml (fine) does not run before second.yaml is found bad
    err = capsys.readouterr().err
    assert f"clipkit reproduce: error: {paper / 'second.yaml'}: not valid YAML, line 2" in err
    write_yaml(paper / "second.yaml", {"notebook": str(QUADRATIC), "fixed": {"seed": "one"}})
    assert cli.main(base) == 2
    assert (f"{paper / 'second.yaml'}: parameter 'seed' (fixed) = 'one' is a str; notebook "
            "'quadratic.ipynb' declares int, accepted: an int (not a bool)"
            ) in capsys.readouterr().err
    assert not runs.exists() and not (paper / "README.md").exists()


def test_reproduce_outside_a_checkout_says_where_the_sweeps_come_from(tmp_path, capsys,
                                                                      monkeypatch):
    from clipkit.paper import reproduce

    monkeypatch.setattr(reproduce, "ROOT", tmp_path / "site-packages")  # an installed wheel
    assert cli.main(["reproduce"]) == 2
    err = capsys.readouterr().err
    assert f"--paper {str(tmp_path / 'site-packages' / 'paper')!r} is not a folder; the " \
           "sweeps (paper/) and their notebooks (notebooks/) come with a clone" in err, err
    assert not (tmp_path / "site-packages").exists()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_reproduce_warns_when_a_notebook_differs_from_its_commit(tmp_path, capsys):
    """JupyterLab saves an edited parameters cell into the notebook, and a spec takes every
    parameter it does not set from there: such a reproduction is not the paper's."""
    repo = tmp_path / "repo"
    (repo / "paper").mkdir(parents=True)
    notebook = repo / "quadratic.ipynb"
    shutil.copy(QUADRATIC, notebook)
    write_yaml(repo / "paper" / "first.yaml", {"notebook": "../quadratic.ipynb",
                                               "grid": {"seed": [0]}})
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    base = ["reproduce", "--paper", str(repo / "paper"), "--runs", str(tmp_path / "runs")]
    from clipkit.paper.reproduce import _edited, _plan

    assert not _edited(notebook)
    notebook.write_text(notebook.read_text().replace("seed: int = 0", "seed: int = 3"))
    assert _edited(notebook) and not _edited(tmp_path / "elsewhere.ipynb")
    args = cli.build_parser().parse_args(base)
    assert _plan(args, repo / "paper") == ["first"]
    err = capsys.readouterr().err
    assert "warning: " in err and "quadratic.ipynb differs from its committed version" in err
    assert "git checkout -- " in err


def test_notebook_parameter_errors_name_the_parameter_value_and_what_is_accepted():
    from clipkit.experiments.notebook import ParameterError, choice, parameters

    namespace = {"__annotations__": {"lam": float, "seed": int}, "lam": "big", "seed": 0}
    with pytest.raises(ParameterError, match="parameter 'lam' = 'big' is a str; the notebook "
                                             "declares float, accepted: an int or a float"):
        parameters(namespace)
    injected = {"In": ["", "# Parameters\nlam = 0.1\nsed = 1\n"], "lam": 0.1, "sed": 1}
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) 'sed' \(injected by "
                                             r"papermill\); .*lam, seed"):
        parameters({**namespace, **injected})
    with pytest.raises(ParameterError, match="parameter 'method' = 'clp'; accepted: 'clip', "
                                             "'standard'"):
        choice("method", "clp", ["clip", "standard"])


def test_a_rebuilt_report_removes_the_figures_and_tables_it_no_longer_makes(tmp_path):
    from clipkit.paper import reproduce
    paper, staging = tmp_path / "paper", tmp_path / "paper" / ".report-x"
    for rel, text in (("figures/history.png", "old"), ("figures/curves.png", "old"),
                      ("tables/old.md", "old"), ("table.yaml", "spec"), ("README.md", "old"),
                      ("results/gone/combined.nc", "old"), ("results/theory/combined.nc", "old")):
        (paper / rel).parent.mkdir(parents=True, exist_ok=True)
        (paper / rel).write_text(text)
    for rel in ("figures/curves.png", "tables/new.md", "README.md", "results/theory/combined.nc"):
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_text("new")
    reproduce._install(staging, paper)
    assert sorted(str(p.relative_to(paper)) for p in paper.rglob("*") if p.is_file()) == [
        "README.md", "figures/curves.png", "results/theory/combined.nc", "table.yaml",
        "tables/new.md"]
    assert (paper / "figures" / "curves.png").read_text() == "new"
    assert (paper / "table.yaml").read_text() == "spec"  # the specs are not the report's

"""One grid point: run its notebook (on a kernel of its own), check and stamp its result file."""

from __future__ import annotations

import contextlib
import json
import math
import os
import site
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr

from clipkit.experiments import results
from clipkit.experiments.results.combine import changed
from clipkit.experiments.sweep import kernels
from clipkit.experiments.sweep.spec import Point

POINT_ATTR = results.POINT_ATTR  # JSON of the parameters a finished result was computed with
NOTEBOOK_ATTR = results.NOTEBOOK_ATTR  # the file name of the notebook that computed it
ENV_ATTR = "environment"  # JSON of the path environment variables the kernel got
#: JSON of the notebook's defaults of the parameters the point did not set: what it ran
#: with besides the point's own values (an edited parameters cell changes them)
DEFAULTS_ATTR = "notebook_defaults"
PATH_ENV = ("CLIPKIT_DATA", "CLIPKIT_RUNS")  # made absolute for the kernels


# --------------------------------------------------------------------------- one point


@dataclass(frozen=True)
class Task:
    """Everything a worker needs to run one point (picklable)."""

    point: Point
    notebook: str
    output: str
    result: str
    kernel: str
    result_param: str
    timeout: float | None
    allow_nan: bool
    batch: tuple[str, ...]
    start_timeout: float = kernels.DEFAULT_START_TIMEOUT
    env: tuple[tuple[str, str], ...] = ()  # environment variables the kernel gets
    ipc_parent: str = ""  # where kernels' socket folders go ("": the system's temporary one)
    headless: tuple[tuple[str, Any], ...] = ()  # parameters set unless the point sets them
    defaults: str = ""  # DEFAULTS_ATTR of the point ("": not known)

    @property
    def partial(self) -> str:
        """Where the notebook writes; the runner checks it and writes ``result``."""
        return f"{self.result}.part"


@dataclass(frozen=True)
class Outcome:
    """How one point ended: ``done`` or ``failed`` (with the error text), and its seconds."""

    name: str
    status: str
    error: str = ""
    wall_time: float = float("nan")
    attempts: int = 1
    retried: tuple[str, ...] = ()  # transient kernel failures that were retried


def kernel_pythonpath() -> str | None:
    """The folder to put on the kernel's PYTHONPATH so it imports this very clipkit.

    None when clipkit is installed in site-packages (the kernel's python finds it there).
    A source checkout or editable install is put first, so a kernel never runs another
    copy of clipkit than the runner (e.g. the editable install's, from a git worktree).
    """
    root = Path(__file__).resolve().parents[3]  # the folder holding clipkit/
    installed = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    return None if root in installed else str(root)


def prepare_kernel_env() -> None:
    """PYTHONPATH for kernels: this clipkit first, and every entry absolute.

    A kernel runs in its notebook's folder, where a relative entry (``PYTHONPATH=.``)
    would name another folder than the user meant.
    """
    root = kernel_pythonpath()
    current = os.environ.get("PYTHONPATH", "")
    parts = [os.path.abspath(p) for p in current.split(os.pathsep) if p]
    if root is not None:
        parts = [root, *[p for p in parts if p != root]]
    if parts:
        os.environ["PYTHONPATH"] = os.pathsep.join(parts)


def kernel_environment() -> dict[str, str]:
    """The path variables of :data:`PATH_ENV` that are set, made absolute (``~`` expanded).

    Computed by the runner, where a relative value means what the user meant; the
    kernels, which run in their notebook's folder, get these values.
    """
    return {k: os.path.abspath(os.path.expanduser(os.environ[k]))
            for k in PATH_ENV if os.environ.get(k)}


def done_attrs(result: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The attrs of a readable result file marked done, else None."""
    try:
        with xr.open_dataset(result, engine=results.ENGINE) as ds:
            attrs = dict(ds.attrs)
    except (OSError, ValueError):
        return None
    return attrs if attrs.get("status") == results.STATUS_DONE else None


def is_finished(result: str | os.PathLike[str], point: Point, notebook: str = "",
                defaults: str = "") -> bool:
    """Whether ``result`` is a readable result file marked done for exactly ``point``
    (and, when both are known, by the notebook of that file name, with the same defaults of
    the parameters the point does not set: an edited ``parameters`` cell is another run)."""
    attrs = done_attrs(result)
    return attrs is not None and finished_for(attrs, point, notebook, defaults)


def finished_for(attrs: dict[str, Any], point: Point, notebook: str = "",
                 defaults: str = "") -> bool:
    """``is_finished`` on the attrs of a result marked done (``done_attrs``)."""
    by, had = str(attrs.get(NOTEBOOK_ATTR, "")), str(attrs.get(DEFAULTS_ATTR, ""))
    return (str(attrs.get(POINT_ATTR, "")) == point.key
            and (not by or not notebook or by == Path(notebook).name)
            and (not had or not defaults or had == defaults))


def differences(result_key: str, point: Point, by: str, notebook: str,
                old_defaults: str = "", new_defaults: str = "") -> str:
    """What differs between a finished result and a point, e.g. ``epochs: 1 -> 3``, or
    ``notebook default lr: 0.1 -> 0.01``."""
    try:
        old = json.loads(result_key)
    except ValueError:
        old = None
    parts = []
    if by and by != Path(notebook).name:
        parts.append(f"notebook: {by} -> {Path(notebook).name}")
    if isinstance(old, dict):
        parts += [f"{k}: {a!r} -> {b!r}" for k, a, b in changed(old, point.params)]
    elif result_key != point.key:
        parts.append("parameters not recorded")
    if old_defaults and new_defaults and old_defaults != new_defaults:
        was, now = json.loads(old_defaults), json.loads(new_defaults)
        parts += [f"notebook default {k}: {a!r} -> {b!r}" for k, a, b in changed(was, now)]
    return ", ".join(parts[:4]) + (f" and {len(parts) - 4} more" if len(parts) > 4 else "")


error_text = kernels.error_text


def _check_result(task: Task) -> tuple[xr.Dataset | None, str]:
    path = Path(task.partial)
    if not path.is_file():
        return None, (
            f"the notebook wrote no result file; it must save its Dataset to its "
            f"{task.result_param!r} parameter with clipkit.results.save"
        )
    try:
        ds = results.load(path)
    except (OSError, ValueError) as exc:
        return None, f"unreadable result file: {exc}"
    if ds.attrs.get("status") == results.STATUS_FAILED:
        return None, str(ds.attrs.get("error") or "the notebook reported a failure")
    missing = [b for b in task.batch if b not in ds.dims]
    if missing:
        return None, f"batched dimension {missing[0]!r} is not a dimension of the result"
    for name, value in task.point.swept.items():
        if name in ds.dims and name not in task.batch:
            return None, (
                f"the grid sweeps {name!r}, but the result has {name!r} as a dimension (of "
                f"length {ds.sizes[name]}), so the runs could not be combined by it: give "
                f"each run a scalar {name!r} (e.g. ds.squeeze({name!r})), or list {name!r} in "
                f"the spec's batch to hand each run the whole list")
        if name in ds.coords and ds[name].ndim == 0 and ds[name].item() != value:
            return None, f"the result says {name}={ds[name].item()!r}, the point {value!r}"
    if not task.allow_nan:
        bad = results.has_nan(ds)
        if bad:
            return None, (f"NaN in {', '.join(bad)}; where NaN is expected, set allow_nan: "
                          f"true in the sweep's spec (or give the variable a "
                          f"{results.NAN_MEANS!r} attribute saying what NaN means there)")
    return ds, ""


def _run_attrs(task: Task, execution: kernels.Execution) -> dict[str, Any]:
    """What the runner records about how a point ran: attempts, retries, environment."""
    return {
        "attempts": execution.attempts,
        "kernel_retries": json.dumps(execution.retried),
        ENV_ATTR: json.dumps(dict(task.env), sort_keys=True),
    }


def _final_path(config: Any, task: Task) -> Any:
    """The notebook's configuration with the result file it was given (the temporary
    ``NAME.nc.part``) replaced by the file the result ends up in."""
    try:
        parsed = json.loads(config) if isinstance(config, str) else None
    except ValueError:
        return config
    if not isinstance(parsed, dict) or parsed.get(task.result_param) != task.partial:
        return config
    return results.to_json({**parsed, task.result_param: task.result})


def _finalize(ds: xr.Dataset, task: Task, wall: float) -> xr.Dataset:
    """Stamp what the sweep knows onto the notebook's result: coordinates, provenance."""
    attrs = dict(ds.attrs)
    stamped = results.stamp(
        ds, task.point.swept,
        config=task.point.params,
        wall_time=wall,
        device=str(attrs.get("device", "unrecorded (the notebook did not stamp it)")),
    )
    if "clipkit_version" in attrs:  # the notebook stamped it: keep its configuration
        stamped.attrs["config"] = _final_path(attrs.get("config", stamped.attrs["config"]), task)
        wall_nb = attrs.get("wall_time")
        if isinstance(wall_nb, (int, float)) and math.isfinite(wall_nb):
            stamped.attrs["wall_time"] = float(wall_nb)  # the notebook's own timing
    # the grid decides what is swept; a fixed value the notebook stamped stays a scalar coord
    stamped.attrs[results.SWEPT_ATTR] = json.dumps(list(task.point.swept))
    stamped.attrs[POINT_ATTR] = task.point.key
    stamped.attrs[NOTEBOOK_ATTR] = Path(task.notebook).name
    if task.defaults:
        stamped.attrs[DEFAULTS_ATTR] = task.defaults
    return stamped


def run_point(task: Task) -> Outcome:
    """Run one point through papermill and leave a done or failed result file.

    Runs in a worker (process pool or dask); never raises for a failing notebook. A
    kernel that fails to start is retried (:func:`clipkit.kernels.execute`). A result
    that cannot be written fails the point with an error naming the file.
    """
    prepare_kernel_env()
    kernels.set_environment(dict(task.env))
    start = time.perf_counter()
    execution = kernels.execute(
        task.notebook, task.output,
        {**dict(task.headless), **task.point.params, task.result_param: task.partial},
        kernel=task.kernel, cwd=str(Path(task.notebook).parent), timeout=task.timeout,
        start_timeout=task.start_timeout, ipc_parent=task.ipc_parent or None,
    )
    wall = time.perf_counter() - start
    error = execution.error
    if not error:
        ds, error = _check_result(task)
        if ds is not None:
            final = _finalize(ds, task, wall)
            final.attrs.update(_run_attrs(task, execution))
            try:
                results.save(final, task.result)
            except OSError as exc:
                error = str(exc)
            else:
                Path(task.partial).unlink()
                return Outcome(task.point.name, results.STATUS_DONE, "", wall,
                               execution.attempts, tuple(execution.retried))
    failed = results.failure(task.point.swept, error, config=task.point.params, wall_time=wall)
    failed.attrs.update(_run_attrs(task, execution))
    try:
        results.save(failed, task.result)
    except OSError as exc:
        if str(exc) != error:
            error = f"{error}; the failure record could not be written either: {exc}"
    with contextlib.suppress(FileNotFoundError):
        Path(task.partial).unlink()
    return Outcome(task.point.name, results.STATUS_FAILED, error, wall,
                   execution.attempts, tuple(execution.retried))

"""A sweep from start to end: lock the output folder, skip finished points, run the rest."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr

from clipkit.experiments import results
from clipkit.experiments.sweep.executors import dask_futures, local_futures, visible_gpus
from clipkit.experiments.sweep.kernels import error_text
from clipkit.experiments.sweep.parameters import check, notebook_defaults, notebook_parameters
from clipkit.experiments.sweep.point import (
    DEFAULTS_ATTR,
    NOTEBOOK_ATTR,
    POINT_ATTR,
    Outcome,
    Task,
    differences,
    done_attrs,
    finished_for,
    kernel_environment,
)
from clipkit.experiments.sweep.spec import Point, Spec, SweepError, format_value

POINTS_DIR = "points"
LOG_NAME = "sweep.log"
WORKER_LOG = "workers.log"
LOCK_NAME = ".sweep.lock"
#: notebook parameters a sweep sets unless its spec does: nobody watches a sweep's kernels,
#: so progress bars would only be stale text in the executed notebooks
HEADLESS = {"progress": False}

log = logging.getLogger("clipkit.sweep")


# --------------------------------------------------------------------------- the sweep


@dataclass
class Summary:
    """What a sweep did. ``dataset`` is the combined result (None on a dry run)."""

    out: Path
    points: list[Point]
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wall_time: float = 0.0
    dataset: xr.Dataset | None = None
    combined: Path | None = None
    retried: dict[str, list[str]] = field(default_factory=dict)  # transient kernel failures
    unreadable: dict[str, str] = field(default_factory=dict)  # name: where it went, why
    #: finished results of other parameters or another notebook: name -> where it went, what
    superseded: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        """One line: counts and time."""
        extra = ""
        if self.retried:
            n = sum(len(v) for v in self.retried.values())
            extra += f", {n} kernel start(s) retried"
        if self.unreadable:
            extra += f", {len(self.unreadable)} unreadable result(s) moved aside"
        if self.superseded:
            extra += (f", {len(self.superseded)} result(s) of other parameters moved aside")
        return (
            f"{len(self.points)} points: {len(self.done)} done, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed{extra} in {self.wall_time:.1f} s"
        )


def _default_out(spec: Spec) -> Path:
    if spec.out is not None:
        return spec.out / spec.profile if spec.profile else spec.out
    suffix = f"-{spec.profile}" if spec.profile else ""
    return Path("runs").resolve() / f"{spec.name}{suffix}"


def make_tasks(spec: Spec, points: Sequence[Point], out: Path, ipc_parent: str = "") -> list[Task]:
    folder = out / POINTS_DIR
    env = tuple(sorted(kernel_environment().items()))
    declared = notebook_parameters(spec.notebook)
    headless = tuple((k, v) for k, v in HEADLESS.items()
                     if k in declared and k not in spec.grid and k not in spec.fixed)
    defaults = notebook_defaults(spec.notebook)
    unset = {k for k in defaults if k != spec.result_param and k not in dict(headless)}

    def own_defaults(p: Point) -> str:
        return results.to_json({k: defaults[k] for k in sorted(unset - set(p.params))})

    return [
        Task(p, str(spec.notebook), str(folder / f"{p.name}.ipynb"), str(folder / f"{p.name}.nc"),
             spec.kernel, spec.result_param, spec.timeout, spec.allow_nan, spec.batch,
             spec.start_timeout, env, ipc_parent, headless, own_defaults(p))
        for p in points
    ]


def _remove_stale_temporaries(folder: Path) -> None:
    """Files of points that a killed sweep never finished: temporaries, unchecked results."""
    for tmp in [*folder.glob(".*.tmp"), *folder.glob("*.nc.part")]:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _existing(task: Task) -> tuple[str, str]:
    """The state of a point's result file: missing, done, failed, superseded (finished for
    other parameters or by another notebook; with what differs) or unreadable (with why)."""
    path = Path(task.result)
    if not path.exists():
        return "missing", ""
    error = results.read_error(path)
    if error:
        return "unreadable", error
    attrs = done_attrs(path)  # read once: a superseded result needs all three
    if attrs is None:
        return "failed", ""
    if finished_for(attrs, task.point, task.notebook, task.defaults):
        return "done", ""
    return "superseded", differences(str(attrs.get(POINT_ATTR, "")), task.point,
                                     str(attrs.get(NOTEBOOK_ATTR, "")), task.notebook,
                                     str(attrs.get(DEFAULTS_ATTR, "")), task.defaults)


@contextlib.contextmanager
def lock_folder(folder: Path, what: str = "sweep") -> Iterator[None]:
    """Hold ``folder/.sweep.lock`` (a ``filelock.FileLock``) while a sweep writes there.

    A second sweep on the same folder gets a :class:`SweepError` at once instead of
    writing into the same files; the lock goes with the process, even a killed one.
    """
    import filelock

    lock_path = folder / LOCK_NAME
    lock = filelock.FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise SweepError(
            f"output folder {str(folder)!r} is in use by another {what} (it holds "
            f"{lock_path.name}); wait for that one to finish, or choose another output folder"
        ) from None
    except OSError as exc:
        raise SweepError(f"cannot lock output folder {str(folder)!r}: {exc}") from None
    try:
        yield
    finally:
        lock.release()


def make_output_folder(folder: Path) -> None:
    """Create an output folder, or raise a SweepError that says why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(
            f"cannot create output folder {str(folder)!r}: {exc.strerror or exc}"
        ) from None


@contextlib.contextmanager
def _logging_to(logfile: Path, verbose: bool) -> Iterator[None]:
    """Log to OUT/sweep.log, and to the console (past the progress bar).

    The console is the root logger's handler where logging is configured (the CLI does),
    else one added here while the sweep runs (e.g. in Jupyter), if ``verbose``.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    file_handler = logging.FileHandler(logfile, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handlers: list[logging.Handler] = [file_handler]
    root = logging.getLogger()
    console = [root] if root.handlers else []
    if verbose and not root.handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
        handlers[-1].setFormatter(logging.Formatter("%(message)s"))
        console = [log]
    old_level = log.level
    log.setLevel(logging.INFO)
    for h in handlers:
        log.addHandler(h)
    try:
        with logging_redirect_tqdm(console) if console else contextlib.nullcontext():
            yield
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(old_level)


def _describe(p: Point) -> str:
    """The point's swept values, and its file name where that reads differently (a value
    that is not a plain word is hashed there), so the log and the summary name it alike."""
    values = [f"{k}={format_value(v)}" for k, v in p.swept.items()]
    if not values or "_".join(values) == p.name:
        return " ".join(values) or p.name
    return f"{' '.join(values)} [{p.name}]"


def run(
    spec_or_path: str | os.PathLike[str] | Mapping[str, Any],
    *,
    profile: str | None = None,
    workers: int | None = None,
    out: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    dry_run: bool = False,
    progress: bool = True,
    verbose: bool = True,
) -> Summary:
    """Run a sweep: validate, run the unfinished points, record failures, combine.

    Args:
        spec_or_path: a YAML spec file or the same content as a mapping.
        profile: a profile of the spec (e.g. ``"quick"``, ``"full"``); default none.
        workers: local worker processes; default the number of GPUs, at least 1.
        out: the output folder; default the spec's ``out`` (plus the profile name) or
            ``runs/SPECNAME[-PROFILE]`` in the current folder.
        scheduler: a dask scheduler address, Client or cluster: run the points there
            instead (OUT must then be on a filesystem the workers share).
        dry_run: validate and list the points; run and write nothing.
        progress: show a tqdm progress bar.
        verbose: log to the console when logging is not configured.

    Raises:
        SweepError: an invalid spec or parameter, before anything runs or is written.
    """
    spec, points = check(spec_or_path, profile)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise SweepError(f"workers must be a positive integer, got {workers!r}")
    out_dir = Path(out).expanduser().resolve() if out is not None else _default_out(spec)
    summary = Summary(out=out_dir, points=points)
    if dry_run:
        for p in points:
            print(f"{p.name}: {results.to_json(p.params)}")
        print(f"{len(points)} points -> {out_dir}")
        return summary

    start = time.perf_counter()
    make_output_folder(out_dir / POINTS_DIR)
    with lock_folder(out_dir), tempfile.TemporaryDirectory(prefix="clipkit-") as ipc:
        # the kernels' socket folders go in `ipc`, removed here even when workers are killed
        tasks = make_tasks(spec, points, out_dir, ipc)
        _remove_stale_temporaries(out_dir / POINTS_DIR)
        with _logging_to(out_dir / LOG_NAME, verbose):
            try:
                _run_tasks(spec, tasks, summary, workers, scheduler, progress)
            except BaseException:
                # interrupted (Ctrl-C) or stopped: combined.nc still shows what is finished,
                # not the state of an earlier run; its own failure must not hide this one
                with contextlib.suppress(Exception):
                    _combine(spec, tasks, summary, out_dir)
                raise
            _combine(spec, tasks, summary, out_dir)
            summary.wall_time = time.perf_counter() - start
            log.info("sweep %s: %s; combined -> %s", spec.name, summary.line(),
                     summary.combined or "nothing (no point left a result file)")
            described = {t.point.name: _describe(t.point) for t in tasks}
            for name, err in summary.failed.items():
                log.info("  failed %s: %s", described.get(name, name), err)
    return summary


def _combine(spec: Spec, tasks: Sequence[Task], summary: Summary, out_dir: Path) -> None:
    """Combine the points' result files into OUT/combined.nc (atomically replaced)."""
    finished = [Path(t.result) for t in tasks if Path(t.result).is_file()]
    if not finished:
        return
    try:
        summary.dataset = results.combine([results.load(f) for f in finished],
                                          [f.name for f in finished])
    except ValueError as exc:  # in the log too, beside the points it concerns
        log.error("sweep %s: %s; the point files are kept, but no %s: %s",
                  spec.name, summary.line(), results.COMBINED_NAME, exc)
        raise
    summary.combined = results.save(summary.dataset, out_dir / results.COMBINED_NAME)


def _run_tasks(spec: Spec, tasks: Sequence[Task], summary: Summary, workers: int | None,
               scheduler: Any, progress: bool) -> None:
    """Sort out the existing result files, run the other points, log each outcome."""
    from tqdm.auto import tqdm

    todo = []
    for t in tasks:
        state, error = _existing(t)
        if state == "done":
            summary.skipped.append(t.point.name)
            continue
        if state == "unreadable":
            moved = results.move_aside(t.result)
            summary.unreadable[t.point.name] = f"moved to {moved.name}: {error}"
            log.warning("UNREADABLE result %s (%s): moved to %s; the point runs again",
                        Path(t.result).name, error, moved.name)
        elif state == "superseded":
            # a finished result is never overwritten: it may be the only copy of hours of work
            moved = results.move_aside(t.result, results.SUPERSEDED_SUFFIX)
            if Path(t.output).is_file():  # the notebook that computed it goes with it
                os.replace(t.output, moved.with_name(
                    Path(t.output).name + moved.name[len(Path(t.result).name):]))
            summary.superseded[t.point.name] = f"moved to {moved.name}: {error}"
            log.warning("OTHER PARAMETERS in %s (%s): moved to %s; the point runs again",
                        Path(t.result).name, error, moved.name)
        todo.append(t)
    n_workers = workers or max(1, len(visible_gpus()))
    where = "dask" if scheduler is not None else f"{n_workers} local worker(s)"
    log.info("sweep %s: %d points, %d to run on %s, %d already done -> %s",
             spec.name, len(summary.points), len(todo), where, len(summary.skipped), summary.out)
    if not todo:
        return
    stream = (dask_futures(todo, scheduler) if scheduler is not None
              else local_futures(todo, min(n_workers, len(todo)), summary.out / WORKER_LOG))
    bar = tqdm(total=len(todo), desc=f"sweep {spec.name}", unit="point", disable=not progress)
    try:
        with bar:
            for task, fut in stream:
                outcome = _outcome(task, fut)
                for i, err in enumerate(outcome.retried, start=1):
                    log.warning("retry  %s: kernel start failed on attempt %d of %d (%s); "
                                "ran again", _describe(task.point), i, outcome.attempts, err)
                if outcome.retried:
                    summary.retried[outcome.name] = list(outcome.retried)
                if outcome.status == results.STATUS_DONE:
                    summary.done.append(outcome.name)
                    log.info("done   %s (%.1f s)", _describe(task.point), outcome.wall_time)
                else:
                    summary.failed[outcome.name] = outcome.error
                    log.warning("FAILED %s (%.1f s): %s", _describe(task.point),
                                outcome.wall_time, outcome.error)
                bar.update()
    except BaseException as exc:
        stream.close()  # stops the workers now, not when the generator is collected
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped ({exc})"
        log.warning("sweep %s %s: %d done, %d failed, %d not finished; rerun to resume "
                    "(finished points are skipped)", spec.name, why, len(summary.done),
                    len(summary.failed), len(todo) - len(summary.done) - len(summary.failed))
        raise


#: why a point has no outcome when the local pool broke: which point's worker died is not
#: known, and the queued points never started, so none is recorded as failed on disk
POOL_BROKE = ("not finished: the pool of worker processes broke (a worker died: killed, or "
              "out of memory) before this point's result came back; nothing is recorded for "
              "it, and a rerun runs it")


def _outcome(task: Task, fut: Any) -> Outcome:
    """The outcome of a future; a worker that died is recorded as the point's failure,
    except where the whole local pool broke (:data:`POOL_BROKE`)."""
    try:
        return fut.result()
    except BrokenExecutor:
        return Outcome(task.point.name, results.STATUS_FAILED, POOL_BROKE)
    except Exception as exc:
        error = f"worker failed: {error_text(exc)}"
        with contextlib.suppress(Exception):
            results.record_failure(task.result, task.point.swept, error, config=task.point.params)
        return Outcome(task.point.name, results.STATUS_FAILED, error)

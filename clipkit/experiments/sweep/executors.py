"""Where points run: a local process pool (one GPU per worker) or a dask.distributed cluster."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import multiprocessing
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from clipkit.experiments.sweep.kernels import error_text
from clipkit.experiments.sweep.point import Outcome, Task, run_point
from clipkit.experiments.sweep.spec import SweepError

DASK_CONNECT_TIMEOUT = "30s"  # how long to try reaching a dask scheduler

log = logging.getLogger("clipkit.sweep")


# --------------------------------------------------------------------------- executors


def _init_worker(slots: Any, gpus: Sequence[str], stderr_log: str) -> None:
    """Process-pool initializer: own GPU (round robin), stderr to the sweep's worker log.

    The kernels inherit this process's stderr; their chatter (and papermill's warnings)
    goes to ``OUT/workers.log`` instead of through the progress bar.
    """
    exit_with_parent()
    fd = os.open(stderr_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)  # umask decides
    os.dup2(fd, 2)
    os.close(fd)
    gpu = gpu_for_worker(slots.get(), gpus)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


PARENT_POLL_SECONDS = 0.5


def exit_with_parent(poll: float = PARENT_POLL_SECONDS) -> None:
    """In a pool worker: a daemon thread that, once the sweep's process is gone (killed, or
    crashed, so that its cleanup never ran), kills this worker's descendants (its kernel, in
    a session of its own) and the worker itself.

    Without it a worker outlived a SIGKILL of ``clipkit sweep``: it ran the points already
    queued to it into the output folder, whose lock had died with the sweep (a resumed sweep
    would run them beside it), then waited forever. The parent is polled (os.getppid()
    changes when it dies) rather than with Linux's PR_SET_PDEATHSIG, which is Linux only and
    fires when the *thread* that started the worker ends, not the process.
    """
    import threading

    parent = os.getppid()

    def watch() -> None:
        import psutil

        while os.getppid() == parent:
            threading.Event().wait(poll)
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
        os._exit(1)

    threading.Thread(target=watch, name="clipkit-exit-with-parent", daemon=True).start()


def gpu_for_worker(slot: int, gpus: Sequence[str]) -> str | None:
    """The GPU id worker number ``slot`` uses: round robin over ``gpus``; None without GPUs."""
    return gpus[slot % len(gpus)] if gpus else None


def visible_gpus() -> list[str]:
    """The GPU ids the workers may use: CUDA_VISIBLE_DEVICES, else torch's device count.

    torch (seconds to import) is asked only where an NVIDIA driver is installed.
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if "torch" not in sys.modules and shutil.which("nvidia-smi") is None:
        return []
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def local_futures(
    tasks: Sequence[Task], workers: int, stderr_log: Path
) -> Iterator[tuple[Task, Future]]:
    ctx = multiprocessing.get_context("spawn")  # fork would copy threads and CUDA state
    gpus = visible_gpus()
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(slots, gpus, str(stderr_log))) as pool:
        futures = {pool.submit(run_point, t): t for t in tasks}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut
        except BaseException:  # Ctrl-C, or the caller stopped: stop the running points now
            _kill_workers(pool)  # first: shutdown() forgets the processes
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's worker processes and everything they started (their kernels).

    Without this, leaving the pool waits for the running points to finish. Killed
    workers write nothing more: their points have no result file (or a ``.part`` file,
    removed by the next run) and are run again next time. The workers are stopped first
    (SIGSTOP), so that none can start a kernel while their descendants are collected; then
    all are killed. Kernels run in sessions of their own (a Ctrl-C does not reach them), and
    a kernel still starting when its worker dies may never notice (ipykernel's parent
    poller is not running yet; seen: an orphaned kernel alive minutes later, holding the
    command's stdout open). ProcessPoolExecutor has ``kill_workers`` from Python 3.14 only;
    its processes are in ``_processes`` before and after; psutil finds the descendants.
    """
    import psutil

    procs = list((getattr(pool, "_processes", None) or {}).values())
    if not procs:
        kill = getattr(pool, "kill_workers", None)
        if kill is not None:
            kill()
        return
    workers = []
    for proc in procs:
        with contextlib.suppress(psutil.Error, ValueError):
            w = psutil.Process(proc.pid)
            w.suspend()
            workers.append(w)
    family = list(workers)
    for w in workers:
        with contextlib.suppress(psutil.Error):
            family.extend(w.children(recursive=True))
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.kill()
    for proc in procs:  # the pool's own handles: reaped, so no zombie is left behind
        with contextlib.suppress(Exception):
            proc.kill()


def _dask_client(scheduler: Any) -> tuple[Any, bool]:
    """A dask Client for an address, a Client or a cluster; and whether we own it."""
    from dask.distributed import Client

    if isinstance(scheduler, Client):
        return scheduler, False
    if isinstance(scheduler, str) or hasattr(scheduler, "scheduler_address"):
        try:
            return Client(scheduler, timeout=DASK_CONNECT_TIMEOUT), True
        except Exception as exc:  # dask raises OSError, TimeoutError, ValueError, ...
            where = scheduler if isinstance(scheduler, str) else scheduler.scheduler_address
            raise SweepError(
                f"cannot connect to the dask scheduler {where!r}: {error_text(exc)} "
                "(accepted: an address such as tcp://host:8786 where a scheduler runs)"
            ) from None
    raise TypeError(
        f"scheduler must be a dask scheduler address, a dask Client or a cluster, "
        f"got {type(scheduler).__name__}"
    )


def run_point_in_fresh_context(task: Task) -> Outcome:
    """``run_point`` in an empty ``contextvars`` context.

    A dask worker thread runs tasks in a copy of its own context, where jupyter_core may
    already have recorded an event loop (a ContextVar) that is running in another thread;
    papermill would then fail with "This event loop is already running". An empty context
    makes it create a loop of its own.
    """
    return contextvars.Context().run(run_point, task)


def dask_futures(tasks: Sequence[Task], scheduler: Any) -> Iterator[tuple[Task, Any]]:
    from dask.distributed import as_completed as dask_completed

    client, owned = _dask_client(scheduler)
    try:
        futures = {
            client.submit(run_point_in_fresh_context, t,
                          key=f"clipkit-sweep-{t.point.name}-{os.getpid()}",
                          pure=False): t
            for t in tasks
        }
        try:
            for fut in dask_completed(list(futures)):
                yield futures[fut], fut
        except BaseException:  # Ctrl-C, or the caller stopped: cancel what has not finished
            with contextlib.suppress(Exception):
                client.cancel(list(futures))
            raise
    finally:
        if owned:
            client.close()

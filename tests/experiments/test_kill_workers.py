"""An interrupted local sweep kills its workers and what they started (the kernels), even
processes in sessions of their own that a Ctrl-C to the command's group never reaches."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil

from clipkit.experiments.sweep.executors import _kill_workers


def start_grandchild_and_wait(pid_file: str) -> None:
    """In a pool worker: start a long process in its own session (as a kernel is), record
    its pid, and keep the worker busy (a point still running)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                             start_new_session=True)
    Path(pid_file).write_text(str(child.pid))
    time.sleep(120)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_kill_workers_also_kills_their_descendants_in_other_sessions(tmp_path):
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    files = [tmp_path / f"pid{i}" for i in range(2)]
    futures = [pool.submit(start_grandchild_and_wait, str(f)) for f in files]
    deadline = time.monotonic() + 120
    while not all(f.exists() and f.read_text() for f in files):
        assert time.monotonic() < deadline, "the workers did not start their processes"
        time.sleep(0.1)
    grandchildren = [int(f.read_text()) for f in files]
    workers = [p.pid for p in pool._processes.values()]
    assert not any(gone(pid) for pid in grandchildren)

    _kill_workers(pool)
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in [*grandchildren, *workers]):
        assert time.monotonic() < deadline, "a worker or its child survived"
        time.sleep(0.1)
    for fut in futures:
        assert fut.exception(timeout=30) is not None  # the points did not finish

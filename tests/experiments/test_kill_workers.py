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


POOL_THEN_WAIT = """
import multiprocessing, sys, time
from concurrent.futures import ProcessPoolExecutor
sys.path.insert(0, {tests!r})
from test_kill_workers import start_grandchild_and_wait
from clipkit.experiments.sweep.executors import exit_with_parent
pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                           initializer=exit_with_parent, initargs=(0.1,))
futures = [pool.submit(start_grandchild_and_wait, {pid_file!r}) for _ in range(3)]
time.sleep(600)
"""


def test_workers_and_their_kernels_end_when_the_sweep_is_killed(tmp_path):
    """A SIGKILL of `clipkit sweep` runs none of its cleanup: its worker ran the points
    already queued to it, unlocked, then waited forever (an outside audit's reproducer)."""
    pid_file = tmp_path / "pid"
    script = POOL_THEN_WAIT.format(tests=str(Path(__file__).parent), pid_file=str(pid_file))
    sweep = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the worker did not start its process"
        time.sleep(0.1)
    kernel = int(pid_file.read_text())
    worker = psutil.Process(kernel).ppid()
    assert worker != sweep.pid and psutil.Process(worker).ppid() == sweep.pid
    sweep.kill()
    sweep.wait()
    deadline = time.monotonic() + 30
    while not (gone(worker) and gone(kernel)):
        assert time.monotonic() < deadline, "the worker or its kernel outlived the sweep"
        time.sleep(0.1)
    assert pid_file.read_text() == str(kernel)  # no queued point started after the kill

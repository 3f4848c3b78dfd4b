"""Execute a notebook with papermill on a kernel of its own; retry kernels that fail to start.

Why kernels fail to start in a sweep: jupyter_client picks a kernel's five TCP ports by
binding port 0 and releasing it, then writes them to the connection file; the kernel
binds them a second or more later (much later on a loaded machine). Any other process
that opens a socket in between (another worker's kernel or its client, a dask worker,
anything on the machine) may take one of them (jupyter/jupyter_client#487, #154;
nteract/papermill#511). A kernel that loses its shell, stdin or control port exits
("Kernel died before replying to kernel_info"); one that loses its iopub port hangs in
ipykernel's exit handler (its zmq context waits for the unbound iopub socket) and
never answers, so the client gives up after the start timeout ("Kernel didn't respond
in 60 seconds"). ``benchmarks/kernel_port_race.py`` reproduces both by taking a
port before the kernel starts.

So, on POSIX, each kernel talks over **IPC** (Unix domain sockets) in a private
temporary folder: nothing to race for. The start timeout is longer than papermill's
60 s (a kernel on a loaded machine can take a while to import), and a kernel that
still fails *before its first cell ran* is retried, a bounded number of times with a
short back-off. An error raised by a cell, a cell timeout or a NaN is never retried:
running the point again would give the same answer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "RETRIES",
    "BACKOFF",
    "Execution",
    "execute",
    "is_transient",
    "cells_started",
    "set_environment",
]

DEFAULT_START_TIMEOUT = 120.0  # seconds a kernel may take to answer its first request
RETRIES = 2  # kernel start failures retried per point (so at most 3 attempts)
BACKOFF = (1.0, 3.0)  # seconds to wait before the 1st, 2nd retry

# the errors jupyter_client / nbclient raise when a kernel does not come up
_START_MESSAGES = (
    "Kernel didn't respond",
    "Kernel died before replying to kernel_info",
)


@dataclass
class Execution:
    """How running a notebook went: ``error`` ("" when it ran through), attempts, retries."""

    error: str = ""
    attempts: int = 1
    retried: list[str] = field(default_factory=list)  # the transient errors that were retried


def error_text(exc: BaseException) -> str:
    """One line naming an exception: papermill's cell errors as ``Name: value (In [n])``."""
    ename = getattr(exc, "ename", None)  # papermill's PapermillExecutionError
    if ename is not None:
        cell = getattr(exc, "exec_count", None)
        where = f" (In [{cell}])" if cell is not None else ""
        return f"{ename}: {getattr(exc, 'evalue', '')}{where}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def cells_started(output: str | os.PathLike[str]) -> bool:
    """Whether papermill started any cell of the executed notebook ``output``.

    papermill stamps ``metadata.papermill.start_time`` on a cell and saves the notebook
    before the cell runs; an unreadable or absent output means nothing ran.
    """
    try:
        with open(output, encoding="utf-8") as fh:
            nb = json.load(fh)
    except (OSError, ValueError):
        return False
    return any(
        (cell.get("metadata", {}).get("papermill") or {}).get("start_time")
        for cell in nb.get("cells", [])
    )


def is_transient(exc: BaseException, output: str | os.PathLike[str]) -> bool:
    """A kernel that failed to start, or died before the first cell ran: worth a retry.

    Errors from a cell (an exception, a timeout, a kernel that died in a cell) are not.
    """
    if getattr(exc, "ename", None) is not None:  # an exception raised by a cell
        return False
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    if isinstance(exc, CellTimeoutError):
        return False
    start_error = isinstance(exc, DeadKernelError) or (
        isinstance(exc, RuntimeError) and str(exc).startswith(_START_MESSAGES)
    )
    if not start_error:
        try:
            import zmq
        except ImportError:  # pragma: no cover - pyzmq comes with jupyter_client
            return False
        start_error = isinstance(exc, zmq.ZMQError)
    return start_error and not cells_started(output)


# a Unix socket's path must fit in sockaddr_un (104 bytes on macOS, 108 on Linux)
MAX_SOCKET_PATH = 100


def _socket_folder(parent: str | None) -> str | None:
    """A new private folder for a kernel's sockets, whose socket paths fit; None if none.

    Tried in ``parent`` (when it exists), then the system's temporary folder, then /tmp.
    """
    for base in (parent, tempfile.gettempdir(), "/tmp"):
        if not base or not os.path.isdir(base):
            continue
        try:
            folder = tempfile.mkdtemp(prefix="k", dir=base)
        except OSError:
            continue
        if len(os.fsencode(os.path.join(folder, "k-99"))) <= MAX_SOCKET_PATH:
            return folder
        os.rmdir(folder)
    return None


@contextlib.contextmanager
def _private_transport(parent: str | None = None) -> Iterator[dict[str, Any]]:
    """papermill arguments that start the kernel on IPC sockets in a private folder.

    The folder is made in ``parent`` when that exists (a sweep's own temporary folder,
    which the sweep removes even when its workers are killed), else in the system's
    temporary folder. Windows has no IPC transport for Jupyter kernels, and a socket path
    must be short: where neither works, the kernel keeps TCP (and the retries).
    """
    folder = None if sys.platform.startswith("win") else _socket_folder(parent)
    if folder is None:
        yield {}
        return
    from traitlets.config import Config

    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = os.path.join(folder, "k")  # sockets k-1 ... k-5
    try:
        yield {"config": config}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def set_environment(values: Mapping[str, str]) -> None:
    """Set environment variables that the kernels started from this process inherit.

    Not undone afterwards: with dask, points run in threads of one process, and undoing
    one point's values could take them from a kernel another thread is starting. A
    sweep's values are the same for every point (absolute paths, see
    :func:`clipkit.sweep.kernel_environment`).
    """
    os.environ.update(values)


def execute(
    notebook: str,
    output: str,
    parameters: Mapping[str, Any],
    *,
    kernel: str,
    cwd: str,
    timeout: float | None = None,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    retries: int = RETRIES,
    backoff: tuple[float, ...] = BACKOFF,
    on_retry: Callable[[int, str], None] | None = None,
    ipc_parent: str | None = None,
) -> Execution:
    """Run ``notebook`` into ``output`` with papermill; never raises for a failing notebook.

    Args:
        notebook, output: the input notebook and where the executed copy goes.
        parameters: papermill parameters.
        kernel: the Jupyter kernel's name.
        cwd: the kernel's working folder.
        timeout: seconds a cell may run (None: no limit).
        start_timeout: seconds the kernel may take to start.
        retries: how many transient kernel failures to retry (see :func:`is_transient`).
        backoff: seconds to wait before each retry (the last value repeats).
        on_retry: called with (attempt number, error text) before each retry.
        ipc_parent: a folder for the kernels' socket folders (default: the system's
            temporary folder).
    """
    import papermill

    result = Execution()
    while True:
        try:
            with _private_transport(ipc_parent) as transport:
                papermill.execute_notebook(
                    notebook, output,
                    parameters=dict(parameters),
                    kernel_name=kernel,
                    execution_timeout=timeout,
                    start_timeout=math.ceil(start_timeout),  # nbclient takes whole seconds
                    progress_bar=False,
                    log_output=False,
                    cwd=cwd,
                    **transport,
                )
            return result
        except Exception as exc:  # any failure of the notebook or its kernel is the point's
            text = error_text(exc)
            if result.attempts > retries or not is_transient(exc, output):
                result.error = text
                return result
            result.retried.append(text)
            if on_retry is not None:
                on_retry(result.attempts, text)
            time.sleep(backoff[min(result.attempts - 1, len(backoff) - 1)] if backoff else 0.0)
            result.attempts += 1


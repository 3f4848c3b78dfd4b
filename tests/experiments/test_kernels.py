"""sweep kernels: kernel start failures are retried (bounded), notebook errors never are.

The unit tests replace papermill by a stand-in that fails as a kernel would; the last
test runs a real sweep on a kernel that dies on its first two starts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import papermill
import pytest

from clipkit.experiments import results, sweep
from clipkit.experiments.sweep import kernels

NOTEBOOKS = Path(__file__).parent / "notebooks"


class Flaky:
    """A stand-in for papermill.execute_notebook: raises the given errors, then runs."""

    def __init__(self, errors, *, cell_started=False):
        self.errors = list(errors)
        self.calls = 0
        self.cell_started = cell_started
        self.configs = []

    def __call__(self, notebook, output, **kwargs):
        self.calls += 1
        self.configs.append(kwargs.get("config"))
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("x = 1")
        cell.metadata["papermill"] = {"start_time": "2024-01-01T00:00:00" if self.cell_started
                                      else None, "status": "pending"}
        nb.cells = [cell]
        nbformat.write(nb, output)
        if self.errors:
            raise self.errors.pop(0)


def run(monkeypatch, tmp_path, flaky, **kwargs):
    monkeypatch.setattr(papermill, "execute_notebook", flaky)
    retried = []
    execution = kernels.execute(
        "in.ipynb", str(tmp_path / "out.ipynb"), {}, kernel="python3", cwd=str(tmp_path),
        backoff=(0.0,), on_retry=lambda attempt, err: retried.append((attempt, err)), **kwargs)
    return execution, retried


def test_a_kernel_that_does_not_start_is_retried_and_recorded(monkeypatch, tmp_path):
    flaky = Flaky([RuntimeError("Kernel didn't respond in 60 seconds"),
                   RuntimeError("Kernel died before replying to kernel_info")])
    execution, retried = run(monkeypatch, tmp_path, flaky)
    assert execution.error == "" and execution.attempts == 3 and flaky.calls == 3
    assert execution.retried == ["RuntimeError: Kernel didn't respond in 60 seconds",
                                 "RuntimeError: Kernel died before replying to kernel_info"]
    assert [a for a, _ in retried] == [1, 2]


def test_retries_are_bounded(monkeypatch, tmp_path):
    flaky = Flaky([RuntimeError("Kernel didn't respond in 60 seconds")] * 10)
    execution, retried = run(monkeypatch, tmp_path, flaky, retries=2)
    assert flaky.calls == 3 and execution.attempts == 3 and len(retried) == 2
    assert execution.error == "RuntimeError: Kernel didn't respond in 60 seconds"


def test_errors_of_the_notebook_are_never_retried(monkeypatch, tmp_path):
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    cell_error = PapermillExecutionError(1, 2, "raise x", "RuntimeError", "deliberate", [])
    for error, started in [(cell_error, True), (CellTimeoutError("Cell timed out"), True),
                           (DeadKernelError("Kernel died"), True),  # died in a cell
                           (FileNotFoundError("no such notebook"), False),
                           (ValueError("bad parameter"), False)]:
        flaky = Flaky([error], cell_started=started)
        execution, retried = run(monkeypatch, tmp_path, flaky)
        assert flaky.calls == 1 and execution.attempts == 1 and not retried, error
        assert execution.error


def test_a_kernel_that_died_before_any_cell_ran_is_retried(monkeypatch, tmp_path):
    from nbclient.exceptions import DeadKernelError

    execution, _ = run(monkeypatch, tmp_path, Flaky([DeadKernelError("Kernel died")]))
    assert execution.error == "" and execution.attempts == 2


@pytest.mark.skipif(sys.platform.startswith("win"), reason="no IPC kernels on Windows")
def test_kernels_talk_over_private_ipc_sockets(monkeypatch, tmp_path):
    flaky = Flaky([RuntimeError("Kernel died before replying to kernel_info")])
    run(monkeypatch, tmp_path, flaky)
    folders = [c.KernelManager.ip for c in flaky.configs]
    assert [c.KernelManager.transport for c in flaky.configs] == ["ipc", "ipc"]
    assert folders[0] != folders[1]  # a fresh folder per attempt ...
    assert not any(Path(f).parent.exists() for f in folders)  # ... removed afterwards


@pytest.mark.skipif(sys.platform.startswith("win"), reason="no IPC kernels on Windows")
def test_socket_paths_stay_short_enough_for_unix_sockets(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    folder = kernels._socket_folder(str(deep))  # too deep: the system's temporary folder
    assert folder is not None and not folder.startswith(str(deep))
    assert len(os.fsencode(os.path.join(folder, "k-99"))) <= kernels.MAX_SOCKET_PATH
    os.rmdir(folder)
    assert kernels._socket_folder(str(tmp_path)).startswith(str(tmp_path))  # short: there


FLAKY_KERNEL = '''
import os, sys
count = os.path.join(os.path.dirname(os.path.abspath(__file__)), "starts")
n = len(open(count).read()) if os.path.exists(count) else 0
with open(count, "a") as fh:
    fh.write("x")
if n < 2:
    sys.exit(1)        # 1st and 2nd start: the kernel dies (as when its port is taken)
from ipykernel import kernelapp
kernelapp.launch_new_instance()
'''


def test_a_sweep_retries_a_kernel_that_fails_to_start(tmp_path, monkeypatch):
    kernel_dir = tmp_path / "jupyter" / "kernels" / "flaky"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "flaky.py").write_text(FLAKY_KERNEL)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(kernel_dir / "flaky.py"), "-f", "{connection_file}"],
        "display_name": "flaky", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
        [str(tmp_path / "jupyter"), *filter(None, [os.environ.get("JUPYTER_PATH")])]))
    spec = {"notebook": str(NOTEBOOKS / "quadratic.ipynb"), "kernel": "flaky",
            "grid": {"seed": [3]}}
    summary = sweep.run(spec, workers=1, out=tmp_path / "out", progress=False)
    assert summary.done == ["seed=3"], summary.failed
    ds = results.load(tmp_path / "out" / "points" / "seed=3.nc")
    assert ds.attrs["attempts"] == 3
    retried = json.loads(ds.attrs["kernel_retries"])
    assert retried == ["RuntimeError: Kernel died before replying to kernel_info"] * 2
    assert (kernel_dir / "starts").read_text() == "xxx"
    log = (tmp_path / "out" / "sweep.log").read_text()
    assert log.count("retry  seed=3: kernel start failed on attempt") == 2
    assert "2 kernel start(s) retried" in summary.line()

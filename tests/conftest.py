import os
import sys
from pathlib import Path

# Tiny models run no faster on two threads, and on a loaded 2-core machine (or with the
# sweep tests' parallel kernels, which inherit this) oversubscribed threads spin: one.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def data_root() -> Path:
    """A folder with the MNIST / Fashion-MNIST IDX files, or skip.

    Taken from CLIPKIT_DATA, else ../shared/data beside the checkout (these machines).
    """
    env = os.environ.get("CLIPKIT_DATA")
    root = Path(env) if env else SHARED_DATA
    if not (root / "fashion-mnist").is_dir() and not (root / "FashionMNIST").is_dir():
        pytest.skip(f"no image data under {root} (set CLIPKIT_DATA to run real-data tests)")
    return root


def pytest_sessionfinish(session, exitstatus):
    """Close the ipywidgets the tests made while the interpreter still runs.

    Left to the garbage collector at exit, each one's ``__del__`` printed an "Exception
    ignored ... sys.meta_path is None" traceback after the summary. ``close_all`` itself
    raises KeyError for a widget made before a test imported ipykernel, whose comm manager
    then replaced the one that registered the widget's comm; ``close`` has already taken that
    widget out of ipywidgets' registry and marked its comm closed (so its ``__del__`` is
    quiet), and the next round goes on with the others.
    """
    widgets = sys.modules.get("ipywidgets")
    if widgets is None:
        return
    for _ in range(100_000):  # each round closes at least one widget
        try:
            widgets.Widget.close_all()
            return
        except KeyError:
            continue


# The slowest tests (sweeps of notebook kernels, JupyterLab, notebooks run by papermill) go
# first when the suite is spread over processes (`make test`: pytest-xdist), so that no
# process is left with a long test at the end while the others idle.
SLOW_FIRST = ("tests/experiments/test_faults.py", "tests/experiments/test_sweep.py",
              "tests/experiments/test_kernels.py", "tests/paper/test_jupyterlab.py",
              "tests/paper/test_notebooks.py", "tests/paper/test_report_verdicts.py")


def pytest_collection_modifyitems(config, items):
    if not getattr(config.option, "numprocesses", None):
        return  # a serial run keeps the usual order
    root = Path(__file__).resolve().parents[1]

    def rank(item) -> int:
        path = item.path.resolve().relative_to(root).as_posix()
        return SLOW_FIRST.index(path) if path in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the usual order within each file and among the rest

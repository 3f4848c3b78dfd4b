"""Sweep overheads: papermill's cost per point, and the speed-up of 2 workers over 1.

    PYTHONPATH=. python benchmarks/bench_sweep.py [--points 6] [--work 2.0]

Measures, in one run:
1. papermill alone: ``papermill.execute_notebook`` of a notebook that does nothing but
   write a one-number result, run back to back in this process (kernel start included);
2. a 1-worker sweep of the same do-nothing notebook: the whole per-point cost of a sweep
   (worker start-up, papermill, kernel, checking and stamping the result, combining);
3. sweeps of ``--points`` points that each do ``--work`` seconds of CPU work, with 1 and
   with 2 local workers, and prints the speed-up.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from clipkit import sweep

NOTEBOOK = (Path(__file__).resolve().parent.parent / "tests" / "experiments" / "notebooks"
            / "work.ipynb")


def time_papermill(points: int, folder: Path) -> float:
    """Seconds per back-to-back papermill run of the do-nothing notebook."""
    import papermill

    sweep.prepare_kernel_env()  # the kernel imports this clipkit, as in a sweep
    start = time.perf_counter()
    for i in range(points):
        papermill.execute_notebook(
            str(NOTEBOOK), str(folder / f"pm{i}.ipynb"),
            parameters={"work": 0.0, "seed": i, "result_path": str(folder / f"pm{i}.nc")},
            kernel_name="python3", progress_bar=False,
        )
    return (time.perf_counter() - start) / points


def time_sweep(points: int, work: float, workers: int, out: Path) -> float:
    """Wall seconds of a whole sweep of ``points`` points of ``work`` seconds each."""
    spec = {"notebook": str(NOTEBOOK), "grid": {"seed": list(range(points))},
            "fixed": {"work": work}}
    start = time.perf_counter()
    summary = sweep.run(spec, workers=workers, out=out, progress=False, verbose=False)
    elapsed = time.perf_counter() - start
    if summary.failed or len(summary.done) != points:
        raise RuntimeError(f"benchmark sweep failed: {summary.failed}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=6, help="points per sweep (default 6)")
    parser.add_argument("--work", type=float, default=2.0,
                        help="CPU seconds per point in the speed-up sweeps (default 2)")
    args = parser.parse_args()
    n, work = args.points, args.work
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}; "
          f"{n} points per sweep")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        per_pm = time_papermill(n, folder)
        per_point = time_sweep(n, 0.0, 1, folder / "noop") / n
        t1 = time_sweep(n, work, 1, folder / "w1")
        t2 = time_sweep(n, work, 2, folder / "w2")
    print(f"papermill alone, do-nothing notebook:  {per_pm:6.2f} s per point")
    print(f"1-worker sweep, do-nothing notebook:   {per_point:6.2f} s per point "
          f"({per_point / per_pm:.2f}x papermill alone)")
    print(f"{n} points x {work:g} s work, 1 worker:  {t1:6.1f} s "
          f"({(t1 - n * work) / n:.2f} s per point beyond the work)")
    print(f"{n} points x {work:g} s work, 2 workers: {t2:6.1f} s")
    print(f"speed-up of 2 workers over 1:          {t1 / t2:6.2f}x")


if __name__ == "__main__":
    main()

"""Load check: sweeps of tiny points on a machine kept busy, counting spurious failures.

    PYTHONPATH=. python benchmarks/load_sweep.py [--points 40] [--workers 2] [--runs 3] [--load 2]

Starts ``--load`` processes that spin on the CPU (pure Python loops), then runs a sweep of
``--points`` tiny points (``tests/experiments/notebooks/quadratic.ipynb``: a few numpy lines
each, so
nearly all of a point's time is starting its kernel) on ``--workers`` local workers,
``--runs`` times in a row, each into a fresh folder. Prints, per run and in total: points
done, failed, and kernel starts retried (each retry is also in the run's ``sweep.log``).
Every point can succeed, so any failure is a spurious one; the exit status is 1 if any
point failed. Takes minutes (about 10 s per point per worker on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

from clipkit import sweep

NOTEBOOK = (Path(__file__).resolve().parent.parent / "tests" / "experiments" / "notebooks"
            / "quadratic.ipynb")


def spin() -> None:
    """Hold a core until terminated."""
    n = 0
    while True:
        n = (n + 1) % 1_000_003


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=40, help="points per sweep (default 40)")
    parser.add_argument("--workers", type=int, default=2, help="local workers (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="sweeps in a row (default 3)")
    parser.add_argument("--load", type=int, default=2,
                        help="CPU-busy processes beside the sweep (default 2)")
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    busy = [ctx.Process(target=spin, daemon=True) for _ in range(args.load)]
    for p in busy:
        p.start()
    spec = {"notebook": str(NOTEBOOK), "grid": {"seed": list(range(args.points))}}
    totals = {"points": 0, "done": 0, "failed": 0, "retried": 0}
    try:
        with tempfile.TemporaryDirectory(prefix="clipkit-load-") as tmp:
            print(f"{args.runs} sweeps of {args.points} points on {args.workers} workers, "
                  f"{args.load} CPU-busy processes beside them", flush=True)
            for i in range(args.runs):
                start = time.perf_counter()
                summary = sweep.run(spec, workers=args.workers, out=Path(tmp) / f"run{i}",
                                    progress=False, verbose=False)
                retried = sum(len(v) for v in summary.retried.values())
                print(f"run {i + 1}: {len(summary.points)} points, {len(summary.done)} done, "
                      f"{len(summary.failed)} failed, {retried} kernel starts retried, "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
                for name, error in summary.failed.items():
                    print(f"  FAILED {name}: {error}", flush=True)
                for name, errors in summary.retried.items():
                    print(f"  retried {name}: {'; '.join(errors)}", flush=True)
                totals["points"] += len(summary.points)
                totals["done"] += len(summary.done)
                totals["failed"] += len(summary.failed)
                totals["retried"] += retried
    finally:
        for p in busy:
            p.terminate()
    print(f"total: {args.runs} runs, {totals['points']} points, {totals['done']} done, "
          f"{totals['failed']} failed, {totals['retried']} kernel starts retried")
    return 1 if totals["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The README's main job: run every sweep of ``paper/`` and rebuild the report.

``python -m clipkit.reproduce`` (``make reproduce``, ``clipkit reproduce``) runs the
``quick`` profile of each sweep spec in ``paper/`` (theory, regression, trade-off, the
MNIST/Fashion-MNIST table) on the local machine, then regenerates ``paper/figures``,
``paper/tables`` and ``paper/README.md`` from the results, and prints where they are.
Finished points are skipped on a second run (the sweeps resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "add_arguments", "run"]

ROOT = Path(__file__).resolve().parent.parent


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="quick", help="the sweeps' profile (quick or full)")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: 2, or one per GPU)")
    p.add_argument("--paper", default=str(ROOT / "paper"),
                   help="folder with the sweep specs; figures, tables and report go there")
    p.add_argument("--runs", default=None, help="run folders (default: runs/paper-PROFILE)")
    p.add_argument("--only", nargs="*", default=None, help="run only these sweeps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from clipkit import report, sweep

    paper = Path(args.paper).resolve()
    runs = Path(args.runs).resolve() if args.runs else ROOT / "runs" / f"paper-{args.profile}"
    names = list(args.only) if args.only else list(report.SPECS)
    workers = args.workers or max(2, len(sweep.visible_gpus()))
    start = time.perf_counter()
    timings, commands, failed = {}, {}, {}
    print(f"clipkit reproduce: {len(names)} sweeps, profile {args.profile!r}, "
          f"{workers} workers -> {runs}", flush=True)
    for name in names:
        spec = paper / f"{name}.yaml"
        commands[name] = (f"clipkit sweep {os.path.relpath(spec, ROOT)} --profile {args.profile}"
                          f" --workers {workers} --out {os.path.relpath(runs / name, ROOT)}")
        t0 = time.perf_counter()
        try:
            summary = sweep.run(spec, profile=args.profile, workers=workers, out=runs / name,
                                progress=not args.no_progress)
        except sweep.SweepError as exc:
            print(f"clipkit reproduce: sweep {name}: error: {exc}", file=sys.stderr)
            failed[name] = str(exc)
            continue
        timings[name] = time.perf_counter() - t0
        print(f"  {name}: {summary.line()}", flush=True)
        if summary.failed:
            failed[name] = "; ".join(f"{k}: {v}" for k, v in summary.failed.items())
    total = time.perf_counter() - start
    if failed:
        # a report from a partial run would replace the committed one with fewer sections:
        # leave paper/ as it was, say what failed; a rerun skips the finished points
        print(f"\nreproduction stopped after {total / 60:.1f} min: {len(failed)} sweep(s) had "
              f"failed points, so {paper} was left unchanged", file=sys.stderr)
        for name, err in failed.items():
            print(f"  FAILED points in {name}: {err[:500]}", file=sys.stderr)
            if "DataNotFound" in err or "missing" in err:
                print("  (image data: set CLIPKIT_DATA to a folder with the MNIST / "
                      "Fashion-MNIST IDX files, or run where torchvision can download them)",
                      file=sys.stderr)
        print(f"runs:    {runs} (rerun to finish; finished points are skipped)")
        return 1
    path = report.build(runs, paper, profile=args.profile, commands=commands,
                        timings=timings, total_seconds=total)
    print(f"\nreproduction finished in {total / 60:.1f} min")
    print(f"figures: {paper / 'figures'}")
    print(f"tables:  {paper / 'tables'}")
    print(f"report:  {path}")
    print(f"runs:    {runs} (open them with notebooks/explore.ipynb)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipkit.reproduce",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())

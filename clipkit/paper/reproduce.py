"""The README's main job: run every sweep of ``paper/`` and rebuild the report.

``python -m clipkit.reproduce`` (``make reproduce``, ``clipkit reproduce``) runs the
``quick`` profile (or ``--profile paper`` / ``full``) of each sweep spec (``*.yaml``) in
``paper/`` (theory, regression, trade-off, the MNIST/Fashion-MNIST table) on the local
machine, then regenerates ``paper/figures``, ``paper/tables`` and ``paper/README.md`` from
the results, and prints where they are. Finished points are skipped on a second run (the
sweeps resume).

Every spec is read and checked before the first point runs. Relative ``--paper`` and
``--runs`` folders (and ``CLIPKIT_DATA``) are taken from the current folder. The report
is written only when every point finished, each file atomically (a Ctrl-C or a crash
leaves the previous report, never half of one); one reproduction at a time may use a
runs folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "add_arguments", "run", "paper_sweeps", "ReproduceError"]

ROOT = Path(__file__).resolve().parents[2]  # the checkout: clipkit/paper/reproduce.py
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
STAGING_PREFIX = ".report-"  # the report is drawn in paper/.report-XXXX, then moved in


class ReproduceError(ValueError):
    """A bad folder, sweep name or spec: raised before anything runs."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from clipkit.cli import positive_int

    p.add_argument("--profile", default="quick",
                   help="the sweeps' profile: quick (CPU, about 10 min on 2 quiet cores, up "
                        "to 20 on a busy machine), paper (CPU, hours) or full (GPU)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="local worker processes (default: 2, or one per GPU)")
    p.add_argument("--paper", default=str(ROOT / "paper"),
                   help="folder with the sweep specs (*.yaml); figures, tables and report "
                        "go there")
    p.add_argument("--runs", default=None, help="run folders (default: runs/paper-PROFILE)")
    p.add_argument("--only", nargs="*", default=None, help="run only these sweeps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def paper_sweeps(paper: Path) -> list[str]:
    """The sweeps of a paper folder: its ``*.yaml`` files, the report's order first."""
    from clipkit.paper import report

    names = sorted(p.stem for p in paper.glob("*.yaml") if p.is_file())
    return [n for n in report.SPECS if n in names] + [n for n in names if n not in report.SPECS]


def _plan(args: argparse.Namespace, paper: Path) -> list[str]:
    """The sweeps to run, each spec read and checked (with the profile) before any runs."""
    from clipkit.experiments import sweep

    if not paper.is_dir():
        hint = ("; the sweeps (paper/) and their notebooks (notebooks/) come with a clone of "
                "the clipkit repository, not with the installed package: run it in a clone, "
                "or pass --paper DIR" if paper == ROOT / "paper" else "")
        raise ReproduceError(f"--paper {str(paper)!r} is not a folder{hint}")
    available = paper_sweeps(paper)
    if not available:
        raise ReproduceError(f"--paper {str(paper)!r} holds no sweep specs (*.yaml)")
    names = list(args.only) if args.only else available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ReproduceError(f"--only: unknown sweep {unknown[0]!r}; the sweeps of {paper}: "
                             f"{', '.join(available)}")
    notebooks = []
    for name in names:
        spec, _ = sweep.check(paper / f"{name}.yaml", args.profile)
        notebooks.append(spec.notebook)
    for notebook in sorted(set(notebooks)):
        if _edited(notebook):
            print(f"clipkit reproduce: warning: {notebook} differs from its committed version "
                  f"(git diff): every parameter a spec does not set takes that notebook's "
                  f"edited defaults, so these runs are not the paper's; `git checkout -- "
                  f"{notebook}` restores it", file=sys.stderr)
    return names


def _edited(path: Path) -> bool:
    """Whether git says a tracked file has changes (False outside a git checkout)."""
    try:
        run = subprocess.run(["git", "status", "--porcelain", "--", path.name],
                             cwd=path.parent, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    state = run.stdout[:2]
    return run.returncode == 0 and bool(state.strip()) and state != "??"


#: the folders of ``paper/`` the report owns: a file there that the report did not build
#: this time (a figure an older version drew) is removed, so none outlives its code
BUILT_FOLDERS = ("figures", "tables", "results")


def _install(staging: Path, paper: Path) -> None:
    """Move the files built in ``staging`` into ``paper``, each with an atomic rename; then
    remove the files of :data:`BUILT_FOLDERS` that this build did not make."""
    built = set()
    for src in sorted(staging.rglob("*")):
        if src.is_file():
            rel = src.relative_to(staging)
            dst = paper / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            built.add(rel)
    for folder in BUILT_FOLDERS:
        for old in sorted((paper / folder).rglob("*")):
            if old.is_file() and old.relative_to(paper) not in built:
                old.unlink()


def _build_report(runs: Path, paper: Path, **kwargs) -> Path:
    """``report.build`` into a staging folder beside ``paper``, then moved into place.

    A reproduction stopped while the report is drawn leaves the old files, never a
    half-written figure or table.
    """
    from clipkit.paper import report

    for stale in paper.glob(f"{STAGING_PREFIX}*"):  # left by a reproduction that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=paper))
    try:
        built = report.build(runs, staging, **kwargs)
        _install(staging, paper)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paper / built.relative_to(staging)


def run(args: argparse.Namespace) -> int:
    """Run the sweeps and build the report; the exit status (0, 1 failed points, 2 bad
    input, 130 interrupted)."""
    from clipkit.experiments import sweep

    paper = Path(args.paper).expanduser().resolve()
    runs = (Path(args.runs).expanduser().resolve() if args.runs
            else ROOT / "runs" / f"paper-{args.profile}")
    try:
        names = _plan(args, paper)
        sweep.make_output_folder(runs)
        with sweep.lock_folder(runs, what="reproduction"):
            return _run(args, names, paper, runs)
    except (ReproduceError, sweep.SweepError) as exc:
        print(f"clipkit reproduce: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the disk filled up
        print(f"clipkit reproduce: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nclipkit reproduce: interrupted; {paper} was left unchanged. Run the same "
              "command again to resume (finished points are skipped).", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, names: list[str], paper: Path, runs: Path) -> int:
    from clipkit.experiments import sweep

    workers = args.workers or max(2, len(sweep.visible_gpus()))
    start = time.perf_counter()
    timings, commands, failed, earlier = {}, {}, {}, {}
    print(f"clipkit reproduce: {len(names)} sweeps, profile {args.profile!r}, "
          f"{workers} workers -> {runs}", flush=True)
    for name in names:
        spec = paper / f"{name}.yaml"
        commands[name] = (f"clipkit sweep {os.path.relpath(spec, ROOT)} --profile {args.profile}"
                          f" --workers {workers} --out {os.path.relpath(runs / name, ROOT)}")
        t0 = time.perf_counter()
        summary = sweep.run(spec, profile=args.profile, workers=workers, out=runs / name,
                            progress=not args.no_progress)
        timings[name] = time.perf_counter() - t0
        earlier[name] = len(summary.skipped)  # finished by an earlier, interrupted invocation
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
    path = _build_report(runs, paper, profile=args.profile, commands=commands,
                         timings=timings, total_seconds=total, earlier=earlier)
    print(f"\nreproduction finished in {total / 60:.1f} min")
    print(f"figures: {paper / 'figures'}")
    print(f"tables:  {paper / 'tables'}")
    print(f"results: {paper / 'results'} (without trained weights; "
          "open them with notebooks/explore.ipynb)")
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

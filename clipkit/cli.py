"""The ``clipkit`` command line: ``clipkit sweep SPEC.yaml ...``, ``clipkit reproduce``.

Each subcommand is one entry of :data:`COMMANDS`: a help line, a function that adds its
arguments to a parser, and a function that runs it and returns the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

__all__ = ["main", "COMMANDS", "Command", "positive_int", "EXIT_INTERRUPTED"]

EXIT_INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C (128 + SIGINT)


class Command(NamedTuple):
    """A subcommand: its help line, its arguments, and what it runs."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (``--workers``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number (1, 2, ...)")
    return value


def _sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("The spec's format (notebook, grid, fixed, batch, profiles, ...) is documented "
                "in the docstring of clipkit.experiments.sweep (python -m pydoc "
                "clipkit.experiments.sweep) and in docs/extending.md; README.md shows a "
                "minimal spec.")
    p.add_argument("spec", help="the sweep's YAML file (notebook, grid, fixed, profiles)")
    p.add_argument("--profile", help="a profile of the spec, e.g. quick or full")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="local worker processes (default: one per GPU, at least 1)")
    p.add_argument("--out", help="output folder (default: the spec's 'out' key with the "
                                 "profile as a subfolder, else runs/SPEC-PROFILE in the "
                                 "current folder; runs/SPEC without a profile)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the points on this dask.distributed scheduler, e.g. tcp://host:8786")
    p.add_argument("--dry-run", action="store_true", help="list the points and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _sweep(args: argparse.Namespace) -> int:
    from clipkit.experiments import sweep

    try:
        summary = sweep.run(
            args.spec, profile=args.profile, workers=args.workers, out=args.out,
            scheduler=args.scheduler, dry_run=args.dry_run, progress=not args.no_progress,
        )
    except sweep.SweepError as exc:
        print(f"clipkit sweep: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # e.g. the disk filled up while writing combined.nc,
        # or OUT/combined.nc is a folder: the message names it, a traceback would bury it
        print(f"clipkit sweep: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clipkit sweep: interrupted; run the same command again to resume "
              "(finished points are skipped)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1 if summary.failed else 0


def _reproduce_arguments(p: argparse.ArgumentParser) -> None:
    from clipkit.paper import reproduce

    reproduce.add_arguments(p)


def _reproduce(args: argparse.Namespace) -> int:
    from clipkit.paper import reproduce

    return reproduce.run(args)


COMMANDS: dict[str, Command] = {
    "sweep": Command("run a notebook over a parameter grid with papermill",
                     _sweep_arguments, _sweep),
    "reproduce": Command("run every paper/ sweep (quick profile) and rebuild the report",
                         _reproduce_arguments, _reproduce),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="clipkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    return parser


#: signals that stop a command as Ctrl-C does (its workers and kernels stopped, finished
#: points kept, the log and combined.nc written): ``kill``, ``timeout``, a batch system's
#: time limit, a closed terminal. A signal that was ignored when the command started
#: (``nohup``) stays ignored.
STOP_SIGNALS = ("SIGTERM", "SIGHUP")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _stopping_on_signals() -> Iterator[None]:
    """Within, :data:`STOP_SIGNALS` raise KeyboardInterrupt in the main thread."""
    previous = {}
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)  # (Windows has no SIGHUP)
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            previous[sig] = signal.signal(sig, _interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``clipkit COMMAND ...``; return the exit status (0 ok, 1 failures, 2 bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING)  # "Input Notebook: ..." per call
    with _stopping_on_signals():
        return COMMANDS[args.command].run(args)

"""Helpers for the parameterised notebooks: strict parameters, where results go, provenance.

A clipkit notebook has one cell tagged ``parameters`` with *annotated* defaults
(``lam: list[float] = [0.1]``); papermill puts its injected cell (``# Parameters`` and one
assignment per value) after that one. The next cell calls :func:`parameters`::

    params = ck.notebook.parameters(globals())

which returns the parameters as a dict and raises :class:`ParameterError` for a name
papermill injected that the parameters cell does not declare (papermill would silently
define it) or a value whose type does not match the annotation (the same rules as
``clipkit sweep``: an int is accepted for a float, a bool is not an int). Nothing is
remembered between calls, so cells can be edited and re-run in any order.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from clipkit.experiments.results import move_aside
from clipkit.experiments.types import accepted, list_hint, type_matches

__all__ = [
    "ParameterError", "Timer", "choice", "distinct", "errors_name_parameters",
    "injected_names", "nonnegative", "parameters", "per_method", "positive", "result_file",
]

#: the first line of the cell papermill injects (its Python translator's comment)
INJECTED_HEADER = "# Parameters"


class ParameterError(ValueError):
    """A notebook parameter is unknown, or its value has the wrong type."""


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def injected_names(history: Sequence[str]) -> list[str]:
    """The names assigned by papermill's injected cells among the executed cell sources
    ``history`` (IPython's ``In``), in order; papermill's own ``PAPERMILL_*`` left out."""
    names: list[str] = []
    for source in history:
        if not isinstance(source, str) or source.lstrip().split("\n", 1)[0].strip() != (
                INJECTED_HEADER):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            names += [t.id for t in targets if isinstance(t, ast.Name)
                      and not t.id.startswith("PAPERMILL_") and t.id not in names]
    return names


def parameters(namespace: Mapping[str, Any], before: Iterable[str] | None = None
               ) -> dict[str, Any]:
    """Check the notebook's parameters against their annotations; return them as a dict.

    The parameters are the names the parameters cell annotates (``__annotations__`` of
    the notebook's namespace). A name assigned by a papermill-injected cell (found in
    IPython's input history ``In``) that is not one of them is an error, and so is a
    value that does not fit its annotation.

    Args:
        namespace: the notebook's ``globals()``.
        before: ignored (notebooks written for clipkit 0.1 passed a snapshot of globals).
    """
    del before
    annotations = dict(namespace.get("__annotations__", {}))
    history = namespace.get("In", [])
    unknown = [n for n in injected_names(history if isinstance(history, list) else [])
               if n not in annotations]
    if unknown:
        close = {n: difflib.get_close_matches(n, list(annotations), n=1) for n in unknown}
        guesses = "; ".join(f"did you mean {c[0]!r} for {n!r}?" for n, c in close.items() if c)
        raise ParameterError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} (injected by papermill); "
            f"this notebook's parameters are: {', '.join(sorted(annotations))}"
            + (f"; {guesses}" if guesses else "")
        )
    out = {}
    for name, annotation in annotations.items():
        if name not in namespace:
            raise ParameterError(
                f"parameter {name!r} is declared ({_type_name(annotation)}) but has no value; "
                f"give it a default in the parameters cell"
            )
        value = namespace[name]
        type_name = _type_name(annotation)
        if not type_matches(value, type_name):
            hint = list_hint(name, value, type_name, "papermill")
            raise ParameterError(
                f"parameter {name!r} = {value!r} is a {type(value).__name__}; "
                f"the notebook declares {type_name}, accepted: {accepted(type_name)}"
                + (f"; {hint}" if hint else "")
            )
        out[name] = value
    return out


def choice(name: str, value: Any, accepted: Iterable[Any]) -> Any:
    """``value`` if it is one of ``accepted``, else a :class:`ParameterError` naming them."""
    accepted = list(accepted)
    if value not in accepted:
        raise ParameterError(
            f"parameter {name!r} = {value!r}; accepted: {', '.join(map(repr, accepted))}"
        )
    return value


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def positive(params: Mapping[str, Any], *names: str) -> None:
    """A :class:`ParameterError` naming the first of ``names`` whose value (or a value of
    whose list) is below 1."""
    for name in names:
        if any(v < 1 for v in _values(params[name])):
            each = " (each value)" if isinstance(params[name], (list, tuple)) else ""
            raise ParameterError(f"parameter {name!r} must be >= 1{each}, got {params[name]!r}")


def nonnegative(params: Mapping[str, Any], *names: str) -> None:
    """A :class:`ParameterError` naming the first of ``names`` whose value (or a value of
    whose list) is not a finite number >= 0 (radii, noise levels, λ)."""
    for name in names:
        if any(not (math.isfinite(v) and v >= 0) for v in _values(params[name])):
            each = " (each value)" if isinstance(params[name], (list, tuple)) else ""
            raise ParameterError(f"parameter {name!r} must be a finite number >= 0{each}, "
                                 f"got {params[name]!r}")


def distinct(params: Mapping[str, Any], *names: str) -> None:
    """A :class:`ParameterError` naming the first list of ``names`` with a repeated value
    (a grid's values become coordinates, which must differ)."""
    for name in names:
        values = _values(params[name])
        repeated = sorted({repr(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ParameterError(f"parameter {name!r} repeats {', '.join(repeated)}; each value "
                                 f"must appear once, got {params[name]!r}")


def per_method(name: str, value: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
    """A per-method parameter (``{method name: setting}``) over the notebook's ``defaults``.

    A method the parameter names replaces its default (a mapping of settings is merged into
    the default's, so ``{"clip": {"pairs": 128}}`` keeps the default's other CLIP settings);
    the methods it leaves out keep theirs. A key that is no method (a typo) is a
    :class:`ParameterError` listing the method names.
    """
    from clipkit.train.registry import METHODS

    if not isinstance(value, Mapping):
        raise ParameterError(f"parameter {name!r} must map method names to settings, "
                             f"got {value!r}")
    unknown = sorted(str(k) for k in value if k not in METHODS)
    if unknown:
        raise ParameterError(f"parameter {name!r} has the key {unknown[0]!r}, which is no method; "
                             f"accepted: {', '.join(map(repr, METHODS))}")
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in (defaults or {}).items()}
    for method, setting in value.items():
        base = out.get(method)
        out[method] = ({**base, **setting} if isinstance(base, dict)
                       and isinstance(setting, Mapping) else setting)
    return out


@contextlib.contextmanager
def errors_name_parameters(*names: str) -> Iterator[None]:
    """Turn a ValueError/TypeError raised inside the block (e.g. by ``ck.make_method``) into a
    :class:`ParameterError` that says which notebook parameters it came from."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ParameterError):
            raise
        # from None: the message says it all; the chained traceback through clipkit's and
        # contextlib's frames ran to 70 lines in a notebook, the message at the bottom
        raise ParameterError(f"{exc} (from the parameters {', '.join(names)})") from None


#: an interactive rerun's previous result, beside it: NAME.nc.replaced-DATE
REPLACED_SUFFIX = "replaced"


def _runs_root() -> Path:
    """``$CLIPKIT_RUNS``, else ``runs/`` in the source checkout (git-ignored), else ./runs."""
    env = os.environ.get("CLIPKIT_RUNS")
    if env:
        return Path(env).expanduser().absolute()
    root = Path(__file__).resolve().parents[2]  # clipkit/experiments/notebook.py
    if (root / "pyproject.toml").is_file():
        return root / "runs"
    return Path.cwd() / "runs"


def result_file(result_path: str, notebook: str) -> Path:
    """Where a notebook writes its result: ``result_path``, or a run folder when it is empty.

    An interactive run (``result_path == ""``) writes to
    ``runs/notebooks/<notebook>-<date-time>.nc`` (see :func:`_runs_root`), never next to
    the notebook. A ``result_path`` that names an existing result (a notebook run again
    with the same path) is moved aside first, to ``NAME.nc.replaced-<date-time>``, which
    no sweep or explorer reads as a result: a rerun never overwrites a finished result
    unseen. A sweep's own ``NAME.nc.part`` is the sweep's to manage and is left alone.
    """
    if result_path:
        path = Path(result_path)
        if path.suffix != ".part" and path.is_file():
            moved = move_aside(path, REPLACED_SUFFIX)
            print(f"{path} existed: its previous version is kept as {moved.name}")
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return _runs_root() / "notebooks" / f"{notebook}-{stamp}.nc"


def saved(out: Path, seconds: float) -> str:
    """The line a notebook prints once its result is written. In a sweep the notebook
    writes ``NAME.nc.part``, which the sweep checks and renames, so the line names both."""
    out = Path(out)
    if out.suffix == ".part":
        return (f"wrote {out} ({seconds:.1f} s); the sweep checks it and renames it "
                f"{out.with_suffix('').name}")
    return f"wrote {out} ({seconds:.1f} s)"


class Timer:
    """Wall time since creation: ``Timer().seconds``."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

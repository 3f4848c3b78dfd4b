"""Helpers for the parameterised notebooks: strict parameters, where results go, provenance.

A clipkit notebook starts with ``_before = set(globals())``, then has one cell tagged
``parameters`` with *annotated* defaults (``lam: list[float] = [0.1]``); papermill puts its
injected cell after that one. The next cell calls :func:`parameters`::

    params = ck.notebook.parameters(globals(), _before)

which returns the parameters as a dict and raises :class:`ParameterError` for a name the
parameters cell does not declare (papermill would silently define it) or a value whose
type does not match the annotation (the same rules as ``clipkit sweep``: an int is
accepted for a float, a bool is not an int).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from clipkit.experiments.types import accepted, type_matches

__all__ = [
    "ParameterError", "Timer", "choice", "errors_name_parameters", "parameters", "positive",
    "result_file",
]

_IGNORED = {"__annotations__", "_before", "In", "Out", "_", "__", "___", "exit", "quit",
            "get_ipython", "_ih", "_oh", "_dh", "_i", "_ii", "_iii"}


class ParameterError(ValueError):
    """A notebook parameter is unknown, or its value has the wrong type."""


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def parameters(namespace: Mapping[str, Any], before: Iterable[str]) -> dict[str, Any]:
    """Check the parameters defined since ``before`` against their annotations; return them.

    Args:
        namespace: the notebook's ``globals()``.
        before: the names that existed before the parameters cell (``set(globals())``).
    """
    annotations = dict(namespace.get("__annotations__", {}))
    before = set(before)
    new = [n for n in namespace if n not in before and n not in _IGNORED
           and not n.startswith("_")]  # IPython's _i1, _1, ... ; parameters have no "_"
    unknown = sorted(n for n in new if n not in annotations)
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))}; this notebook's "
            f"parameters are: {', '.join(sorted(annotations))}"
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
            raise ParameterError(
                f"parameter {name!r} = {value!r} is a {type(value).__name__}; "
                f"the notebook declares {type_name}, accepted: {accepted(type_name)}"
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


def positive(params: Mapping[str, Any], *names: str) -> None:
    """A :class:`ParameterError` naming the first of ``names`` whose value is below 1."""
    for name in names:
        if params[name] < 1:
            raise ParameterError(f"parameter {name!r} must be >= 1, got {params[name]!r}")


@contextlib.contextmanager
def errors_name_parameters(*names: str) -> Iterator[None]:
    """Turn a ValueError/TypeError raised inside the block (e.g. by ``ck.make_method``) into a
    :class:`ParameterError` that says which notebook parameters it came from."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ParameterError):
            raise
        raise ParameterError(f"{exc} (from the parameters {', '.join(names)})") from exc


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
    the notebook.
    """
    if result_path:
        return Path(result_path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return _runs_root() / "notebooks" / f"{notebook}-{stamp}.nc"


class Timer:
    """Wall time since creation: ``Timer().seconds``."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

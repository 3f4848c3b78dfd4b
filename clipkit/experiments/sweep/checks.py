"""A sweep's values checked by the notebook itself, for every point, before anything runs.

The type checks of ``parameters.validate`` know a parameter's annotation, not what the
notebook accepts: a negative λ, an unknown dataset or method, ``options.clip.pairs: 0``
pass them, and each such point would start a kernel and fail on its own. So a notebook
tags the cells that check its parameters, and need neither data nor training, with
``checks`` (its imports included). For each point the sweep runs, in this process, the
cells tagged ``parameters`` or ``checks`` in notebook order, with the point's values set
after the parameters cell as papermill would inject them. An error there fails the whole
sweep (dry run included) with every bad point named, before anything is written.

Check cells must be plain Python (no ``%`` magics) and cheap: they run once per point.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipkit.experiments.sweep.spec import Point, SweepError

CHECKS_TAG = "checks"
_PARAMETERS_TAG = "parameters"
#: bad points listed in full in the error; the rest are counted
_SHOWN = 10


def check_cells(notebook: Path) -> list[tuple[str, str]]:
    """(tag, source) of the code cells tagged ``parameters`` or ``checks``, in order; empty
    when the notebook has no ``checks`` cell (its values are then checked when it runs)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    cells = []
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type != "code":
            continue
        if _PARAMETERS_TAG in tags:
            cells.append((_PARAMETERS_TAG, cell.source))
        elif CHECKS_TAG in tags:
            cells.append((CHECKS_TAG, cell.source))
    if not any(tag == CHECKS_TAG for tag, _ in cells):
        return []
    return cells


def point_error(cells: Sequence[tuple[str, str]], params: dict[str, Any],
                notebook: str = "<notebook>") -> str | None:
    """Run the check cells with ``params`` injected; the error they raise, as text, or None.

    Their output and warnings are swallowed; torch's thread count is restored after.
    """
    import torch

    namespace: dict[str, Any] = {"__name__": "__clipkit_checks__"}
    threads = torch.get_num_threads()
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, (tag, source) in enumerate(cells):
                exec(compile(source, f"{notebook} [checks cell {i}]", "exec"), namespace)
                if tag == _PARAMETERS_TAG:
                    namespace.update(copy.deepcopy(params))
    except Exception as exc:  # noqa: BLE001 - any error of a check is the point's error
        return f"{type(exc).__name__}: {exc}"
    finally:
        torch.set_num_threads(threads)
    return None


def check_values(notebook: Path, points: Sequence[Point]) -> None:
    """Raise :class:`SweepError` naming every point whose values the notebook's check cells
    reject (see the module's docstring); a notebook without check cells passes."""
    cells = check_cells(notebook)
    if not cells:
        return
    bad = [(p, err) for p in points
           if (err := point_error(cells, p.params, notebook.name)) is not None]
    if not bad:
        return
    lines = [f"  {p.name}: {err}" for p, err in bad[:_SHOWN]]
    if len(bad) > _SHOWN:
        lines.append(f"  ... and {len(bad) - _SHOWN} more")
    raise SweepError(
        f"{len(bad)} of {len(points)} points have values that notebook {notebook.name!r} "
        f"rejects (its cells tagged {CHECKS_TAG!r}); nothing was run:\n" + "\n".join(lines))

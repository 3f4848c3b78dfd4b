"""A notebook's declared parameters (papermill reads its ``parameters`` cell); values checked."""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clipkit.experiments import results
from clipkit.experiments.sweep.checks import check_values
from clipkit.experiments.sweep.spec import Point, Spec, SweepError, load_spec, naming, plan
from clipkit.experiments.types import accepted, list_hint, type_matches

# --------------------------------------------------------------------------- validation


def _declared_type(info: Mapping[str, Any]) -> str:
    """The type a notebook parameter declares; from its default when it has no annotation."""
    default_src = str(info.get("default", ""))
    try:
        default = ast.literal_eval(default_src)
        literal = True
    except (ValueError, SyntaxError):
        default, literal = None, False
    declared = str(info.get("inferred_type_name") or "None")
    if declared == "None":  # papermill: no annotation
        if not literal or default is None:
            return "Any"
        declared = type(default).__name__
    if literal and default is None and declared != "Any":
        declared = f"Optional[{declared}]"  # `x: str = None` accepts None
    return declared


def _inspect(notebook: Path) -> dict[str, Any]:
    """papermill's view of a notebook's ``parameters`` cell; errors name the notebook."""
    import papermill

    if not notebook.is_file():
        raise SweepError(f"notebook {str(notebook)!r} does not exist")
    try:
        return papermill.inspect_notebook(str(notebook))
    except Exception as exc:  # papermill raises several kinds for unreadable notebooks
        raise SweepError(f"cannot inspect notebook {str(notebook)!r}: {exc}") from exc


def notebook_parameters(notebook: Path) -> dict[str, str]:
    """Names and declared types of a notebook's ``parameters`` cell (via papermill)."""
    return {name: _declared_type(info) for name, info in _inspect(notebook).items()}


def notebook_defaults(notebook: Path) -> dict[str, Any]:
    """The default of each parameter of a notebook's ``parameters`` cell, as a value where
    it is a literal, else as its source text (via papermill)."""
    out: dict[str, Any] = {}
    for name, info in _inspect(notebook).items():
        source = str(info.get("default", ""))
        try:
            out[name] = ast.literal_eval(source)
        except (ValueError, SyntaxError):
            out[name] = source
    return out


def _check_kernel(name: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        manager.get_kernel_spec(name)
    except NoSuchKernel:
        found = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise SweepError(
            f"Jupyter kernel {name!r} not found (available: {found}); install one with "
            f"`python -m ipykernel install --user --name {name}` or set 'kernel' in the spec"
        ) from None


def validate(spec: Spec, points: Sequence[Point] | None = None) -> None:
    """Check every parameter of every point against the notebook's ``parameters`` cell.

    Raises :class:`SweepError` naming the notebook, the parameter and the accepted type
    for: a missing notebook or kernel, a notebook without ``parameters`` cell or result
    parameter, an unknown parameter name, a value of the wrong type.
    """
    declared = notebook_parameters(spec.notebook)
    nb = spec.notebook.name
    if not declared:
        raise SweepError(f"notebook {nb!r} has no cell tagged 'parameters'")
    if spec.result_param not in declared:
        raise SweepError(
            f"notebook {nb!r} has no {spec.result_param!r} parameter; add "
            f"`{spec.result_param}: str = \"\"` to its parameters cell and save the result "
            f"there with clipkit.results.save(ds, {spec.result_param})"
        )
    for where in (spec.grid, spec.fixed):
        if spec.result_param in where:
            raise SweepError(f"{spec.result_param!r} is set by the sweep; remove it from the spec")
    known = ", ".join(sorted(declared))
    for name in [*spec.grid, *spec.fixed]:
        root = name.split(".")[0]
        if root not in declared:
            raise SweepError(
                f"unknown parameter {root!r}: notebook {nb!r} has no such parameter "
                f"(its parameters: {known})"
            )
        if root != name and not type_matches({}, declared[root]):
            raise SweepError(
                f"{name!r} sets a key inside parameter {root!r}, which notebook {nb!r} "
                f"declares as {declared[root]}, not a mapping (dict)"
            )
        if root != name and name in spec.batch:
            raise SweepError(f"{name!r} cannot be batched: a dotted name sets one key of "
                             f"{root!r} per point")
    for name, value in spec.fixed.items():
        if "." not in name:  # a dotted name's value is checked by the notebook
            _check_value(nb, name, value, declared[name], "fixed")
    for name, values in spec.grid.items():
        if "." in name:
            continue
        if name in spec.batch:
            if not type_matches(values, declared[name]):
                raise SweepError(
                    f"parameter {name!r} is batched, so each run gets the whole list "
                    f"{values!r}; notebook {nb!r} declares it as {declared[name]}, "
                    f"it must accept a list (e.g. `{name}: list[float] = [...]`)"
                )
            continue
        for v in values:
            _check_value(nb, name, v, declared[name], "grid")
    _check_kernel(spec.kernel)
    try:
        results.check_engine()  # else every point would run, then fail to write its result
    except ImportError as exc:
        raise SweepError(str(exc)) from None
    for p in points or []:  # values already checked; this guards hand-made points
        unknown = set(p.params) - set(declared)
        if unknown:
            raise SweepError(f"point {p.name}: unknown parameter {sorted(unknown)[0]!r}")


def check(
    spec_or_path: str | os.PathLike[str] | Mapping[str, Any], profile: str | None = None
) -> tuple[Spec, list[Point]]:
    """Read a spec, plan its points and validate them; errors name the spec file.

    The values are checked twice: against the notebook's annotations (``validate``), then by
    the notebook's own cells tagged ``checks`` (``checks.check_values``).
    Runs nothing and writes nothing; raises :class:`SweepError`.
    """
    spec = load_spec(spec_or_path, profile)
    with naming(spec.source):
        points = plan(spec)
        validate(spec, points)
        check_values(spec.notebook, points)
    return spec, points


def _check_value(nb: str, name: str, value: Any, declared: str, where: str) -> None:
    if not type_matches(value, declared):
        hint = list_hint(name, value, declared, "spec")
        if hint and where == "grid":  # each point gets one element of the grid's list
            hint = (f"each point gets one value of the grid, and a grid value is a scalar "
                    f"(it becomes a coordinate); to give every run the whole list, put "
                    f"{name} under 'fixed', or list it in 'batch' if the notebook's result "
                    f"has a dimension {name!r}")
        raise SweepError(
            f"parameter {name!r} ({where}) = {value!r} is a {type(value).__name__}; "
            f"notebook {nb!r} declares {declared}, accepted: {accepted(declared)}"
            + (f"; {hint}" if hint else "")
        )

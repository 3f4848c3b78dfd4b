"""Papermill sweeps: strict parameter checks, resumable runs, failures recorded, results combined.

A sweep is a small YAML file (read with ``yaml.safe_load``)::

    notebook: quadratic.ipynb        # relative to this file
    grid:                            # the Cartesian product of these lists ...
      lam: [0.01, 0.1, 1.0]
      seed: [0, 1, 2]
    fixed:                           # ... with these values for every point
      epochs: 20
    batch: [lam]                     # optional: lam's whole list goes to each run, whose
                                     # Dataset already has a `lam` dimension
    timeout: 600                     # optional: seconds a notebook cell may run
    start_timeout: 120               # optional: seconds a kernel may take to start
    profiles:                        # optional: override grid/fixed/timeout by name
      quick: {fixed: {epochs: 2}, grid: {seed: [0]}}
      full: {fixed: {epochs: 100}}

Each point runs once through papermill into ``OUT/points/``: the executed notebook
``NAME.ipynb`` and the result file ``NAME.nc``, NAME made from the point's swept values.
The notebook receives a path as its ``result_path`` parameter (``NAME.nc.part``) and
writes its Dataset there with :func:`clipkit.results.save`; the runner checks it, stamps
the sweep's coordinates and provenance, and only then writes ``NAME.nc`` (atomically), so
every ``NAME.nc`` is a checked, final result. A point whose result file says ``done``
for the same parameters is skipped; a point that raises, reports NaN or times out gets a
failed record (its error text) and the others go on. The sweep ends by writing
``OUT/combined.nc`` (:func:`clipkit.results.combine`) and a summary.

Points run in a local process pool (spawned processes; with several GPUs each worker
sees its own through ``CUDA_VISIBLE_DEVICES``), or on a dask.distributed cluster.

**Relative paths** mean what the user meant, although each kernel runs in its notebook's
folder: paths written in a spec file (``notebook``, ``out`` and path parameters) are
relative to the spec file; in a spec given as a mapping, and on the command line
(``--out``), relative to the current folder. A *path parameter* is one whose name is
``path``, ``dir``, ``root``, ``file`` or ``folder`` or ends in ``_path``, ``_dir``,
``_root``, ``_file`` or ``_folder`` (``data_root``, ``log_dir``, ...); its non-empty
string values (or lists of them) are made absolute (``~`` expanded; values with ``://``
are left alone). The environment variables ``CLIPKIT_DATA`` and ``CLIPKIT_RUNS`` are
made absolute before any kernel starts. The absolute values are what the points get,
and what their result files record (``config``, ``environment`` attrs).

**Faults.** Kernels use IPC sockets and a kernel that fails to start is retried (see
:mod:`clipkit.kernels`); each retry is logged and recorded in the point's result
(attrs ``attempts``, ``kernel_retries``). One sweep at a time may use an output folder
(a lock file, ``OUT/.sweep.lock``). A result file that cannot be read is reported,
renamed ``NAME.nc.unreadable-DATE`` (kept, not deleted) and its point recomputed. A
result that cannot be written (disk full, no permission) fails its point with an
error naming the file, and leaves no partial file.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import site
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr

from clipkit import kernels, results

__all__ = [
    "SweepError",
    "Spec",
    "Point",
    "Outcome",
    "Summary",
    "load_spec",
    "plan",
    "validate",
    "check",
    "lock_folder",
    "make_output_folder",
    "is_path_parameter",
    "kernel_environment",
    "run",
    "run_point",
]

log = logging.getLogger("clipkit.sweep")

SPEC_KEYS = {
    "notebook", "grid", "fixed", "batch", "profiles", "timeout", "kernel", "out",
    "allow_nan", "result_param", "description", "start_timeout",
}
PROFILE_KEYS = {"grid", "fixed", "timeout", "description"}
POINTS_DIR = "points"
LOG_NAME = "sweep.log"
WORKER_LOG = "workers.log"
LOCK_NAME = ".sweep.lock"
POINT_ATTR = "sweep_point"  # JSON of the parameters a finished result file was computed with
ENV_ATTR = "environment"  # JSON of the path environment variables the kernel got
PATH_ENV = ("CLIPKIT_DATA", "CLIPKIT_RUNS")  # made absolute for the kernels
PATH_WORDS = ("path", "dir", "root", "file", "folder")  # path parameters: NAME or *_NAME
DEFAULT_KERNEL = "python3"
DEFAULT_RESULT_PARAM = "result_path"
DASK_CONNECT_TIMEOUT = "30s"  # how long to try reaching a dask scheduler
_VALUE_TYPES = (str, int, float, bool, type(None), list, dict)


class SweepError(ValueError):
    """A sweep spec or its parameters are invalid; raised before anything runs."""


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class Spec:
    """A sweep spec with its profile applied; paths are absolute."""

    notebook: Path
    grid: dict[str, list[Any]]
    fixed: dict[str, Any]
    batch: tuple[str, ...] = ()
    timeout: float | None = None
    kernel: str = DEFAULT_KERNEL
    result_param: str = DEFAULT_RESULT_PARAM
    allow_nan: bool = False
    out: Path | None = None
    profile: str | None = None
    name: str = "sweep"
    start_timeout: float = kernels.DEFAULT_START_TIMEOUT
    source: Path | None = None  # the spec file, when read from one


@dataclass(frozen=True)
class Point:
    """One run of the notebook: its name, its swept values, every parameter it gets."""

    name: str
    swept: dict[str, Any]
    params: dict[str, Any]

    @property
    def key(self) -> str:
        """Canonical JSON of the parameters: a finished result must carry the same."""
        return results.to_json(self.params)


def _check_keys(where: str, got: Mapping[str, Any], accepted: set[str]) -> None:
    unknown = sorted(set(got) - accepted)
    if unknown:
        raise SweepError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(sorted(accepted))}"
        )


def _value(where: str, value: Any) -> Any:
    """A parameter value: plain data only (parameters are values, never code)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict)):  # numpy scalars
        value = value.item()
    if isinstance(value, list):
        return [_value(where, v) for v in value]
    if isinstance(value, dict):
        return {str(k): _value(where, v) for k, v in value.items()}
    if not isinstance(value, _VALUE_TYPES):
        raise SweepError(
            f"{where} = {value!r} ({type(value).__name__}) is not a plain value; "
            "accepted: str, int, float, bool, null, lists and mappings of these"
        )
    return value


def _mapping(where: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SweepError(f"{where} must be a mapping of names to values, got {raw!r}")
    return {str(k): v for k, v in raw.items()}


def _grid(where: str, raw: Any) -> dict[str, list[Any]]:
    grid = {}
    for name, values in _mapping(where, raw).items():
        if not isinstance(values, list) or not values:
            raise SweepError(
                f"{where}.{name} must be a non-empty list of values, got {values!r} "
                "(a single value belongs under 'fixed')"
            )
        values = _value(f"{where}.{name}", values)
        dupes = [v for i, v in enumerate(values) if v in values[:i]]
        if dupes:
            raise SweepError(f"{where}.{name} lists {dupes[0]!r} more than once")
        grid[name] = values
    return grid


def _timeout(where: str, raw: Any) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not raw > 0:
        raise SweepError(f"{where} must be a positive number of seconds, got {raw!r}")
    return float(raw)


def is_path_parameter(name: str) -> bool:
    """Whether a parameter holds a path, by its name: ``data_root``, ``log_dir``, ``path``."""
    return any(name == w or name.endswith(f"_{w}") for w in PATH_WORDS)


def _absolute(base: Path, value: Any) -> Any:
    """A path parameter's value made absolute against ``base`` (strings, lists of them)."""
    if isinstance(value, list):
        return [_absolute(base, v) for v in value]
    if not isinstance(value, str) or not value or "://" in value:
        return value
    return os.path.normpath(base / Path(value).expanduser())


@contextlib.contextmanager
def _naming(source: Path | None) -> Iterator[None]:
    """Prefix the errors raised inside with the spec file they are about."""
    try:
        yield
    except SweepError as exc:
        if source is None or str(exc).startswith(f"{source}:"):
            raise
        raise SweepError(f"{source}: {exc}") from None


def load_spec(
    spec_or_path: str | os.PathLike[str] | Mapping[str, Any],
    profile: str | None = None,
) -> Spec:
    """Read a sweep spec (a YAML file, or a mapping) and apply a profile.

    A mapping's relative paths are taken from the current folder; a file's from its folder
    (``notebook``, ``out`` and path parameters, see :func:`is_path_parameter`).
    A profile's ``grid``/``fixed`` entries replace the spec's (a name may move between them).
    Errors about a file start with its path.
    """
    if isinstance(spec_or_path, Mapping):
        return _load_spec(dict(spec_or_path), Path.cwd(), "sweep", None, profile)
    path = Path(spec_or_path)
    if not path.is_file():
        what = "is a folder, not a YAML file" if path.is_dir() else "does not exist"
        raise SweepError(f"sweep spec {str(path)!r} {what}")
    with _naming(path):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SweepError(f"cannot read the file: {exc}") from None
        raw = yaml_safe_load(text, str(path))
        return _load_spec(raw, path.resolve().parent, path.stem, path, profile)


def _load_spec(
    raw: dict[str, Any], base: Path, name: str, source: Path | None, profile: str | None
) -> Spec:
    _check_keys("sweep spec", raw, SPEC_KEYS)
    if "notebook" not in raw:
        raise SweepError("sweep spec: 'notebook' is required (a path to a .ipynb file)")
    grid = _grid("grid", raw.get("grid"))
    fixed = {k: _value(f"fixed.{k}", v) for k, v in _mapping("fixed", raw.get("fixed")).items()}
    both = sorted(set(grid) & set(fixed))
    if both:
        raise SweepError(f"{both[0]!r} is in both 'grid' and 'fixed'; keep it in one")
    timeout = _timeout("timeout", raw.get("timeout"))
    profiles = _mapping("profiles", raw.get("profiles"))
    if profile is not None:
        if profile not in profiles:
            raise SweepError(
                f"unknown profile {profile!r}; this spec has: "
                f"{', '.join(sorted(profiles)) or 'no profiles'}"
            )
        prof = _mapping(f"profiles.{profile}", profiles[profile])
        _check_keys(f"profiles.{profile}", prof, PROFILE_KEYS)
        for k, v in _grid(f"profiles.{profile}.grid", prof.get("grid")).items():
            fixed.pop(k, None)
            grid[k] = v
        for k, v in _mapping(f"profiles.{profile}.fixed", prof.get("fixed")).items():
            grid.pop(k, None)
            fixed[k] = _value(f"profiles.{profile}.fixed.{k}", v)
        if "timeout" in prof:
            timeout = _timeout(f"profiles.{profile}.timeout", prof["timeout"])
    batch = raw.get("batch") or []
    if isinstance(batch, str):
        batch = [batch]
    if not isinstance(batch, list) or not all(isinstance(b, str) for b in batch):
        raise SweepError(f"'batch' must be a list of grid names, got {batch!r}")
    for b in batch:
        if b not in grid:
            raise SweepError(f"batch dimension {b!r} is not in the grid ({', '.join(grid)})")
    for key in ("kernel", "result_param"):
        if key in raw and not isinstance(raw[key], str):
            raise SweepError(f"'{key}' must be a string, got {raw[key]!r}")
    allow_nan = raw.get("allow_nan", False)
    if not isinstance(allow_nan, bool):
        raise SweepError(f"'allow_nan' must be true or false, got {allow_nan!r}")
    start_timeout = _timeout("start_timeout", raw.get("start_timeout"))
    for k in list(grid):
        if is_path_parameter(k):
            grid[k] = [_absolute(base, v) for v in grid[k]]
    for k in list(fixed):
        if is_path_parameter(k):
            fixed[k] = _absolute(base, fixed[k])
    out = raw.get("out")
    if out is not None and not isinstance(out, str):
        raise SweepError(f"'out' must be a folder path (a string), got {out!r}")
    notebook = raw["notebook"]
    if not isinstance(notebook, str) or not notebook:
        raise SweepError(f"'notebook' must be a path to a .ipynb file, got {notebook!r}")
    return Spec(
        notebook=(base / Path(notebook).expanduser()).resolve(),
        grid=grid,
        fixed=fixed,
        batch=tuple(batch),
        timeout=timeout,
        kernel=raw.get("kernel", DEFAULT_KERNEL),
        result_param=raw.get("result_param", DEFAULT_RESULT_PARAM),
        allow_nan=allow_nan,
        out=(base / Path(out).expanduser()).resolve() if out is not None else None,
        profile=profile,
        name=name,
        start_timeout=start_timeout or kernels.DEFAULT_START_TIMEOUT,
        source=source,
    )


def yaml_safe_load(text: str, where: str) -> dict[str, Any]:
    """Parse YAML with the safe loader (no Python objects); the top level must be a mapping."""
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SweepError(f"{where}: not valid YAML{_yaml_where(exc)}") from None
    if not isinstance(raw, dict):
        raise SweepError(
            f"{where}: must hold a mapping (notebook: ..., grid: ..., fixed: ...), "
            f"got {type(raw).__name__} {raw!r:.60}"
        )
    return raw


def _yaml_where(exc: Exception) -> str:
    """``, line L, column C: problem`` from a YAML error (its own text names no file)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or ""
    context = getattr(exc, "context", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    text = problem + (f" ({context})" if context and problem else context or "")
    if not text:  # e.g. a constructor error for a tag the safe loader refuses
        text = str(exc).strip().splitlines()[0]
    return f"{where}: {text}"


# --------------------------------------------------------------------------- points


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def point_name(swept: Mapping[str, Any]) -> str:
    """A file-name-safe, deterministic name from the swept values, e.g. ``lam=0.1_seed=0``.

    Values with characters outside ``[A-Za-z0-9.+-]`` are replaced, and then (or when the
    name is long) a hash of the exact values is appended, so distinct points stay distinct.
    """
    if not swept:
        return "run"
    raw = "_".join(f"{k}={_fmt(v)}" for k, v in swept.items())
    safe = "_".join(
        f"{re.sub(r'[^A-Za-z0-9.+-]', '-', k)}={re.sub(r'[^A-Za-z0-9.+-]', '-', _fmt(v))}"
        for k, v in swept.items()
    )
    if safe != raw or len(safe) > 100:
        digest = hashlib.sha1(results.to_json(dict(swept)).encode()).hexdigest()[:8]
        safe = f"{safe[:100]}-{digest}"
    return safe


def plan(spec: Spec) -> list[Point]:
    """The grid points of a spec, in grid order (the last name varies fastest)."""
    swept_names = [k for k in spec.grid if k not in spec.batch]
    points = []
    for combo in itertools.product(*(spec.grid[k] for k in swept_names)):
        swept = dict(zip(swept_names, combo, strict=True))
        params = {**spec.fixed, **{b: list(spec.grid[b]) for b in spec.batch}, **swept}
        points.append(Point(point_name(swept), swept, params))
    names = [p.name for p in points]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SweepError(f"two grid points share the file name {dupes[0]!r}; rename a value")
    return points


# --------------------------------------------------------------------------- validation


def _split_top(text: str, sep: str) -> list[str]:
    """Split ``text`` at ``sep`` outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def type_matches(value: Any, type_name: str) -> bool:
    """Whether ``value`` fits a notebook parameter's annotation, e.g. ``list[float]``.

    int is accepted where float is; bool is not an int. Types it cannot read are accepted.
    """
    t = type_name.strip().replace("typing.", "")
    if t in ("", "Any", "object"):
        return True
    alternatives = _split_top(t, "|")
    if len(alternatives) > 1:
        return any(type_matches(value, a) for a in alternatives)
    m = re.fullmatch(r"(Optional|Union)\[(.*)\]", t)
    if m:
        options = _split_top(m.group(2), ",") + (["None"] if m.group(1) == "Optional" else [])
        return any(type_matches(value, o) for o in options)
    m = re.fullmatch(r"(list|List|Sequence|tuple|Tuple)\[(.*)\]", t)
    if m:
        inner = _split_top(m.group(2), ",")[0].replace("...", "Any")
        return isinstance(value, list) and all(type_matches(v, inner) for v in value)
    if re.fullmatch(r"(dict|Dict|Mapping)(\[.*\])?", t):
        return isinstance(value, dict)
    checks = {
        "None": lambda v: v is None,
        "NoneType": lambda v: v is None,
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "list": lambda v: isinstance(v, list),
        "List": lambda v: isinstance(v, list),
        "tuple": lambda v: isinstance(v, list),
    }
    check = checks.get(t)
    return True if check is None else check(value)


_ACCEPTS = {
    "float": "an int or a float",
    "int": "an int (not a bool)",
    "bool": "true or false",
    "str": "a string",
}


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


def notebook_parameters(notebook: Path) -> dict[str, str]:
    """Names and declared types of a notebook's ``parameters`` cell (via papermill)."""
    import papermill

    if not notebook.is_file():
        raise SweepError(f"notebook {str(notebook)!r} does not exist")
    try:
        inspected = papermill.inspect_notebook(str(notebook))
    except Exception as exc:  # papermill raises several kinds for unreadable notebooks
        raise SweepError(f"cannot inspect notebook {str(notebook)!r}: {exc}") from exc
    return {name: _declared_type(info) for name, info in inspected.items()}


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
        if name not in declared:
            raise SweepError(
                f"unknown parameter {name!r}: notebook {nb!r} has no such parameter "
                f"(its parameters: {known})"
            )
    for name, value in spec.fixed.items():
        _check_value(nb, name, value, declared[name], "fixed")
    for name, values in spec.grid.items():
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

    Runs nothing and writes nothing; raises :class:`SweepError`.
    """
    spec = load_spec(spec_or_path, profile)
    with _naming(spec.source):
        points = plan(spec)
        validate(spec, points)
    return spec, points


def accepted(declared: str) -> str:
    """What a parameter declared as ``declared`` accepts, in words (``float``: an int or ...)."""
    optional = re.fullmatch(r"Optional\[(.*)\]", declared)
    base = optional.group(1) if optional else declared
    words = _ACCEPTS.get(base, base)
    return f"{words}, or None" if optional else words


def _check_value(nb: str, name: str, value: Any, declared: str, where: str) -> None:
    if not type_matches(value, declared):
        raise SweepError(
            f"parameter {name!r} ({where}) = {value!r} is a {type(value).__name__}; "
            f"notebook {nb!r} declares {declared}, accepted: {accepted(declared)}"
        )


# --------------------------------------------------------------------------- one point


@dataclass(frozen=True)
class Task:
    """Everything a worker needs to run one point (picklable)."""

    point: Point
    notebook: str
    output: str
    result: str
    kernel: str
    result_param: str
    timeout: float | None
    allow_nan: bool
    batch: tuple[str, ...]
    start_timeout: float = kernels.DEFAULT_START_TIMEOUT
    env: tuple[tuple[str, str], ...] = ()  # environment variables the kernel gets
    ipc_parent: str = ""  # where kernels' socket folders go ("": the system's temporary one)

    @property
    def partial(self) -> str:
        """Where the notebook writes; the runner checks it and writes ``result``."""
        return f"{self.result}.part"


@dataclass(frozen=True)
class Outcome:
    """How one point ended: ``done`` or ``failed`` (with the error text), and its seconds."""

    name: str
    status: str
    error: str = ""
    wall_time: float = float("nan")
    attempts: int = 1
    retried: tuple[str, ...] = ()  # transient kernel failures that were retried


def _kernel_pythonpath() -> str | None:
    """The folder to put on the kernel's PYTHONPATH so it imports this very clipkit.

    None when clipkit is installed in site-packages (the kernel's python finds it there).
    A source checkout or editable install is put first, so a kernel never runs another
    copy of clipkit than the runner (e.g. the editable install's, from a git worktree).
    """
    import clipkit

    root = Path(clipkit.__file__).resolve().parent.parent
    installed = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    return None if root in installed else str(root)


def _prepare_kernel_env() -> None:
    """PYTHONPATH for kernels: this clipkit first, and every entry absolute.

    A kernel runs in its notebook's folder, where a relative entry (``PYTHONPATH=.``)
    would name another folder than the user meant.
    """
    root = _kernel_pythonpath()
    current = os.environ.get("PYTHONPATH", "")
    parts = [os.path.abspath(p) for p in current.split(os.pathsep) if p]
    if root is not None:
        parts = [root, *[p for p in parts if p != root]]
    if parts:
        os.environ["PYTHONPATH"] = os.pathsep.join(parts)


def kernel_environment() -> dict[str, str]:
    """The path variables of :data:`PATH_ENV` that are set, made absolute (``~`` expanded).

    Computed by the runner, where a relative value means what the user meant; the
    kernels, which run in their notebook's folder, get these values.
    """
    return {k: os.path.abspath(os.path.expanduser(os.environ[k]))
            for k in PATH_ENV if os.environ.get(k)}


def is_finished(result: str | os.PathLike[str], point: Point) -> bool:
    """Whether ``result`` is a readable result file marked done for exactly ``point``."""
    try:
        with xr.open_dataset(result, engine=results.ENGINE) as ds:
            attrs = dict(ds.attrs)
    except (OSError, ValueError):
        return False
    return attrs.get("status") == results.STATUS_DONE and attrs.get(POINT_ATTR) == point.key


_error_text = kernels.error_text


def _check_result(task: Task) -> tuple[xr.Dataset | None, str]:
    path = Path(task.partial)
    if not path.is_file():
        return None, (
            f"the notebook wrote no result file; it must save its Dataset to its "
            f"{task.result_param!r} parameter with clipkit.results.save"
        )
    try:
        ds = results.load(path)
    except (OSError, ValueError) as exc:
        return None, f"unreadable result file: {exc}"
    if ds.attrs.get("status") == results.STATUS_FAILED:
        return None, str(ds.attrs.get("error") or "the notebook reported a failure")
    missing = [b for b in task.batch if b not in ds.dims]
    if missing:
        return None, f"batched dimension {missing[0]!r} is not a dimension of the result"
    for name, value in task.point.swept.items():
        if name in ds.coords and ds[name].ndim == 0 and ds[name].item() != value:
            return None, f"the result says {name}={ds[name].item()!r}, the point {value!r}"
    if not task.allow_nan:
        bad = results.has_nan(ds)
        if bad:
            return None, f"NaN in {', '.join(bad)}"
    return ds, ""


def _run_attrs(task: Task, execution: kernels.Execution) -> dict[str, Any]:
    """What the runner records about how a point ran: attempts, retries, environment."""
    return {
        "attempts": execution.attempts,
        "kernel_retries": json.dumps(execution.retried),
        ENV_ATTR: json.dumps(dict(task.env), sort_keys=True),
    }


def _finalize(ds: xr.Dataset, task: Task, wall: float) -> xr.Dataset:
    """Stamp what the sweep knows onto the notebook's result: coordinates, provenance."""
    attrs = dict(ds.attrs)
    stamped = results.stamp(
        ds, task.point.swept,
        config=task.point.params,
        wall_time=wall,
        device=str(attrs.get("device", "unrecorded (the notebook did not stamp it)")),
    )
    if "clipkit_version" in attrs:  # the notebook stamped it: keep its configuration
        stamped.attrs["config"] = attrs.get("config", stamped.attrs["config"])
        wall_nb = attrs.get("wall_time")
        if isinstance(wall_nb, (int, float)) and math.isfinite(wall_nb):
            stamped.attrs["wall_time"] = float(wall_nb)  # the notebook's own timing
    # the grid decides what is swept; a fixed value the notebook stamped stays a scalar coord
    stamped.attrs[results.SWEPT_ATTR] = json.dumps(list(task.point.swept))
    stamped.attrs[POINT_ATTR] = task.point.key
    return stamped


def run_point(task: Task) -> Outcome:
    """Run one point through papermill and leave a done or failed result file.

    Runs in a worker (process pool or dask); never raises for a failing notebook. A
    kernel that fails to start is retried (:func:`clipkit.kernels.execute`). A result
    that cannot be written fails the point with an error naming the file.
    """
    _prepare_kernel_env()
    kernels.set_environment(dict(task.env))
    start = time.perf_counter()
    execution = kernels.execute(
        task.notebook, task.output, {**task.point.params, task.result_param: task.partial},
        kernel=task.kernel, cwd=str(Path(task.notebook).parent), timeout=task.timeout,
        start_timeout=task.start_timeout, ipc_parent=task.ipc_parent or None,
    )
    wall = time.perf_counter() - start
    error = execution.error
    if not error:
        ds, error = _check_result(task)
        if ds is not None:
            final = _finalize(ds, task, wall)
            final.attrs.update(_run_attrs(task, execution))
            try:
                results.save(final, task.result)
            except OSError as exc:
                error = str(exc)
            else:
                Path(task.partial).unlink()
                return Outcome(task.point.name, results.STATUS_DONE, "", wall,
                               execution.attempts, tuple(execution.retried))
    failed = results.failure(task.point.swept, error, config=task.point.params, wall_time=wall)
    failed.attrs.update(_run_attrs(task, execution))
    try:
        results.save(failed, task.result)
    except OSError as exc:
        if str(exc) != error:
            error = f"{error}; the failure record could not be written either: {exc}"
    with contextlib.suppress(FileNotFoundError):
        Path(task.partial).unlink()
    return Outcome(task.point.name, results.STATUS_FAILED, error, wall,
                   execution.attempts, tuple(execution.retried))


# --------------------------------------------------------------------------- executors


def _init_worker(slots: Any, gpus: Sequence[str], stderr_log: str) -> None:
    """Process-pool initializer: own GPU (round robin), stderr to the sweep's worker log.

    The kernels inherit this process's stderr; their chatter (and papermill's warnings)
    goes to ``OUT/workers.log`` instead of through the progress bar.
    """
    fd = os.open(stderr_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)  # umask decides
    os.dup2(fd, 2)
    os.close(fd)
    gpu = gpu_for_worker(slots.get(), gpus)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def gpu_for_worker(slot: int, gpus: Sequence[str]) -> str | None:
    """The GPU id worker number ``slot`` uses: round robin over ``gpus``; None without GPUs."""
    return gpus[slot % len(gpus)] if gpus else None


def visible_gpus() -> list[str]:
    """The GPU ids the workers may use: CUDA_VISIBLE_DEVICES, else torch's device count.

    torch (seconds to import) is asked only where an NVIDIA driver is installed.
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if "torch" not in sys.modules and shutil.which("nvidia-smi") is None:
        return []
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def _local_futures(
    tasks: Sequence[Task], workers: int, stderr_log: Path
) -> Iterator[tuple[Task, Future]]:
    ctx = multiprocessing.get_context("spawn")  # fork would copy threads and CUDA state
    gpus = visible_gpus()
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(slots, gpus, str(stderr_log))) as pool:
        futures = {pool.submit(run_point, t): t for t in tasks}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut
        except BaseException:  # Ctrl-C, or the caller stopped: stop the running points now
            _kill_workers(pool)  # first: shutdown() forgets the processes
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's worker processes; their kernels notice and exit within about 1 s.

    Without this, leaving the pool waits for the running points to finish. Killed
    workers write nothing more: their points have no result file (or a ``.part`` file,
    removed by the next run) and are run again next time. ProcessPoolExecutor has
    ``kill_workers`` from Python 3.14 only; before, its processes are in ``_processes``.
    """
    kill = getattr(pool, "kill_workers", None)
    if kill is not None:
        kill()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            proc.kill()


def _dask_client(scheduler: Any) -> tuple[Any, bool]:
    """A dask Client for an address, a Client or a cluster; and whether we own it."""
    from dask.distributed import Client

    if isinstance(scheduler, Client):
        return scheduler, False
    if isinstance(scheduler, str) or hasattr(scheduler, "scheduler_address"):
        try:
            return Client(scheduler, timeout=DASK_CONNECT_TIMEOUT), True
        except Exception as exc:  # dask raises OSError, TimeoutError, ValueError, ...
            where = scheduler if isinstance(scheduler, str) else scheduler.scheduler_address
            raise SweepError(
                f"cannot connect to the dask scheduler {where!r}: {_error_text(exc)} "
                "(accepted: an address such as tcp://host:8786 where a scheduler runs)"
            ) from None
    raise TypeError(
        f"scheduler must be a dask scheduler address, a dask Client or a cluster, "
        f"got {type(scheduler).__name__}"
    )


def run_point_in_fresh_context(task: Task) -> Outcome:
    """``run_point`` in an empty ``contextvars`` context.

    A dask worker thread runs tasks in a copy of its own context, where jupyter_core may
    already have recorded an event loop (a ContextVar) that is running in another thread;
    papermill would then fail with "This event loop is already running". An empty context
    makes it create a loop of its own.
    """
    return contextvars.Context().run(run_point, task)


def _dask_futures(tasks: Sequence[Task], scheduler: Any) -> Iterator[tuple[Task, Any]]:
    from dask.distributed import as_completed as dask_completed

    client, owned = _dask_client(scheduler)
    try:
        futures = {
            client.submit(run_point_in_fresh_context, t,
                          key=f"clipkit-sweep-{t.point.name}-{os.getpid()}",
                          pure=False): t
            for t in tasks
        }
        try:
            for fut in dask_completed(list(futures)):
                yield futures[fut], fut
        except BaseException:  # Ctrl-C, or the caller stopped: cancel what has not finished
            with contextlib.suppress(Exception):
                client.cancel(list(futures))
            raise
    finally:
        if owned:
            client.close()


# --------------------------------------------------------------------------- the sweep


@dataclass
class Summary:
    """What a sweep did. ``dataset`` is the combined result (None on a dry run)."""

    out: Path
    points: list[Point]
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wall_time: float = 0.0
    dataset: xr.Dataset | None = None
    combined: Path | None = None
    retried: dict[str, list[str]] = field(default_factory=dict)  # transient kernel failures
    unreadable: dict[str, str] = field(default_factory=dict)  # name: where it went, why

    def line(self) -> str:
        """One line: counts and time."""
        extra = ""
        if self.retried:
            n = sum(len(v) for v in self.retried.values())
            extra += f", {n} kernel start(s) retried"
        if self.unreadable:
            extra += f", {len(self.unreadable)} unreadable result(s) moved aside"
        return (
            f"{len(self.points)} points: {len(self.done)} done, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed{extra} in {self.wall_time:.1f} s"
        )


def _default_out(spec: Spec) -> Path:
    if spec.out is not None:
        return spec.out / spec.profile if spec.profile else spec.out
    suffix = f"-{spec.profile}" if spec.profile else ""
    return Path("runs").resolve() / f"{spec.name}{suffix}"


def _tasks(spec: Spec, points: Sequence[Point], out: Path, ipc_parent: str = "") -> list[Task]:
    folder = out / POINTS_DIR
    env = tuple(sorted(kernel_environment().items()))
    return [
        Task(p, str(spec.notebook), str(folder / f"{p.name}.ipynb"), str(folder / f"{p.name}.nc"),
             spec.kernel, spec.result_param, spec.timeout, spec.allow_nan, spec.batch,
             spec.start_timeout, env, ipc_parent)
        for p in points
    ]


def _remove_stale_temporaries(folder: Path) -> None:
    """Files of points that a killed sweep never finished: temporaries, unchecked results."""
    for tmp in [*folder.glob(".*.tmp"), *folder.glob("*.nc.part")]:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _existing(task: Task) -> tuple[str, str]:
    """The state of a point's result file: missing, done, redo (failed or other
    parameters) or unreadable (with the reason)."""
    path = Path(task.result)
    if not path.exists():
        return "missing", ""
    error = results.read_error(path)
    if error:
        return "unreadable", error
    return ("done" if is_finished(path, task.point) else "redo"), ""


@contextlib.contextmanager
def lock_folder(folder: Path, what: str = "sweep") -> Iterator[None]:
    """Hold ``folder/.sweep.lock`` (a ``filelock.FileLock``) while a sweep writes there.

    A second sweep on the same folder gets a :class:`SweepError` at once instead of
    writing into the same files; the lock goes with the process, even a killed one.
    """
    import filelock

    lock_path = folder / LOCK_NAME
    lock = filelock.FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise SweepError(
            f"output folder {str(folder)!r} is in use by another {what} (it holds "
            f"{lock_path.name}); wait for that one to finish, or choose another output folder"
        ) from None
    except OSError as exc:
        raise SweepError(f"cannot lock output folder {str(folder)!r}: {exc}") from None
    try:
        yield
    finally:
        lock.release()


def make_output_folder(folder: Path) -> None:
    """Create an output folder, or raise a SweepError that says why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(
            f"cannot create output folder {str(folder)!r}: {exc.strerror or exc}"
        ) from None


@contextlib.contextmanager
def _logging_to(logfile: Path, verbose: bool) -> Iterator[None]:
    """Log to OUT/sweep.log, and to the console (past the progress bar).

    The console is the root logger's handler where logging is configured (the CLI does),
    else one added here while the sweep runs (e.g. in Jupyter), if ``verbose``.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    file_handler = logging.FileHandler(logfile, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handlers: list[logging.Handler] = [file_handler]
    root = logging.getLogger()
    console = [root] if root.handlers else []
    if verbose and not root.handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
        handlers[-1].setFormatter(logging.Formatter("%(message)s"))
        console = [log]
    old_level = log.level
    log.setLevel(logging.INFO)
    for h in handlers:
        log.addHandler(h)
    try:
        with logging_redirect_tqdm(console) if console else contextlib.nullcontext():
            yield
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(old_level)


def _describe(p: Point) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in p.swept.items()) or p.name


def run(
    spec_or_path: str | os.PathLike[str] | Mapping[str, Any],
    *,
    profile: str | None = None,
    workers: int | None = None,
    out: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    dry_run: bool = False,
    progress: bool = True,
    verbose: bool = True,
) -> Summary:
    """Run a sweep: validate, run the unfinished points, record failures, combine.

    Args:
        spec_or_path: a YAML spec file or the same content as a mapping.
        profile: a profile of the spec (e.g. ``"quick"``, ``"full"``); default none.
        workers: local worker processes; default the number of GPUs, at least 1.
        out: the output folder; default the spec's ``out`` (plus the profile name) or
            ``runs/SPECNAME[-PROFILE]`` in the current folder.
        scheduler: a dask scheduler address, Client or cluster: run the points there
            instead (OUT must then be on a filesystem the workers share).
        dry_run: validate and list the points; run and write nothing.
        progress: show a tqdm progress bar.
        verbose: log to the console when logging is not configured.

    Raises:
        SweepError: an invalid spec or parameter, before anything runs or is written.
    """
    spec, points = check(spec_or_path, profile)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise SweepError(f"workers must be a positive integer, got {workers!r}")
    out_dir = Path(out).expanduser().resolve() if out is not None else _default_out(spec)
    summary = Summary(out=out_dir, points=points)
    tasks = _tasks(spec, points, out_dir)
    if dry_run:
        for t in tasks:
            print(f"{t.point.name}: {results.to_json(t.point.params)}")
        print(f"{len(tasks)} points -> {out_dir}")
        return summary

    start = time.perf_counter()
    make_output_folder(out_dir / POINTS_DIR)
    with lock_folder(out_dir), tempfile.TemporaryDirectory(prefix="clipkit-") as ipc:
        # the kernels' socket folders go in `ipc`, removed here even when workers are killed
        tasks = _tasks(spec, points, out_dir, ipc)
        _remove_stale_temporaries(out_dir / POINTS_DIR)
        with _logging_to(out_dir / LOG_NAME, verbose):
            _run_tasks(spec, tasks, summary, workers, scheduler, progress)
            finished = [Path(t.result) for t in tasks if Path(t.result).is_file()]
            summary.dataset = results.combine([results.load(f) for f in finished],
                                              [f.name for f in finished])
            summary.combined = results.save(summary.dataset, out_dir / results.COMBINED_NAME)
            summary.wall_time = time.perf_counter() - start
            log.info("sweep %s: %s; combined -> %s", spec.name, summary.line(), summary.combined)
            for name, err in summary.failed.items():
                log.info("  failed %s: %s", name, err)
    return summary


def _run_tasks(spec: Spec, tasks: Sequence[Task], summary: Summary, workers: int | None,
               scheduler: Any, progress: bool) -> None:
    """Sort out the existing result files, run the other points, log each outcome."""
    from tqdm.auto import tqdm

    todo = []
    for t in tasks:
        state, error = _existing(t)
        if state == "done":
            summary.skipped.append(t.point.name)
            continue
        if state == "unreadable":
            moved = results.move_aside(t.result)
            summary.unreadable[t.point.name] = f"moved to {moved.name}: {error}"
            log.warning("UNREADABLE result %s (%s): moved to %s; the point runs again",
                        Path(t.result).name, error, moved.name)
        todo.append(t)
    n_workers = workers or max(1, len(visible_gpus()))
    where = "dask" if scheduler is not None else f"{n_workers} local worker(s)"
    log.info("sweep %s: %d points, %d to run on %s, %d already done -> %s",
             spec.name, len(summary.points), len(todo), where, len(summary.skipped), summary.out)
    if not todo:
        return
    stream = (_dask_futures(todo, scheduler) if scheduler is not None
              else _local_futures(todo, min(n_workers, len(todo)), summary.out / WORKER_LOG))
    bar = tqdm(total=len(todo), desc=f"sweep {spec.name}", unit="point", disable=not progress)
    try:
        with bar:
            for task, fut in stream:
                outcome = _outcome(task, fut)
                for i, err in enumerate(outcome.retried, start=1):
                    log.warning("retry  %s: kernel start failed on attempt %d of %d (%s); "
                                "ran again", _describe(task.point), i, outcome.attempts, err)
                if outcome.retried:
                    summary.retried[outcome.name] = list(outcome.retried)
                if outcome.status == results.STATUS_DONE:
                    summary.done.append(outcome.name)
                    log.info("done   %s (%.1f s)", _describe(task.point), outcome.wall_time)
                else:
                    summary.failed[outcome.name] = outcome.error
                    log.warning("FAILED %s (%.1f s): %s", _describe(task.point),
                                outcome.wall_time, outcome.error)
                bar.update()
    except BaseException as exc:
        stream.close()  # stops the workers now, not when the generator is collected
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped ({exc})"
        log.warning("sweep %s %s: %d done, %d failed, %d not finished; rerun to resume "
                    "(finished points are skipped)", spec.name, why, len(summary.done),
                    len(summary.failed), len(todo) - len(summary.done) - len(summary.failed))
        raise


def _outcome(task: Task, fut: Any) -> Outcome:
    """The outcome of a future; a worker that died is recorded as the point's failure."""
    try:
        return fut.result()
    except Exception as exc:
        error = f"worker failed: {_error_text(exc)}"
        with contextlib.suppress(Exception):
            results.record_failure(task.result, task.point.swept, error, config=task.point.params)
        return Outcome(task.point.name, results.STATUS_FAILED, error)

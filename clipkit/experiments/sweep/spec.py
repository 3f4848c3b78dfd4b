"""A sweep spec (YAML) read, checked and expanded into its grid points."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipkit.experiments import results
from clipkit.experiments.sweep import kernels

SPEC_KEYS = {
    "notebook", "grid", "fixed", "batch", "profiles", "timeout", "kernel", "out",
    "allow_nan", "result_param", "description", "start_timeout",
}
PROFILE_KEYS = {"grid", "fixed", "timeout", "description"}
PATH_WORDS = ("path", "dir", "root", "file", "folder")  # path parameters: NAME or *_NAME
DEFAULT_KERNEL = "python3"
DEFAULT_RESULT_PARAM = "result_path"
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
        bad = [v for v in values if v is None or isinstance(v, (list, dict))]
        if bad:
            raise SweepError(
                f"{where}.{name}: {bad[0]!r} cannot be a grid value; each value becomes a "
                f"coordinate of the results, so it must be a str, int, float or bool (to "
                f"compare lists or mappings, sweep a name that the notebook maps to them)"
            )
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
def naming(source: Path | None) -> Iterator[None]:
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
    with naming(path):
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


#: YAML 1.1 (PyYAML) reads a float only with a dot: 1.0e-3, not 1e-3, which it leaves a
#: string; a spec's λ = 1e-3 is a number (YAML 1.2 and Python read it so)
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


def _spec_loader() -> type:
    """yaml.SafeLoader, reading 1e-3 as a float too (a subclass: PyYAML's own is untouched)."""
    import yaml

    class SpecLoader(yaml.SafeLoader):
        pass

    SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT,
                                     list("-+0123456789"))
    return SpecLoader


def yaml_safe_load(text: str, where: str) -> dict[str, Any]:
    """Parse YAML with the safe loader (no Python objects; ``1e-3`` is a float, as in YAML
    1.2); the top level must be a mapping."""
    import yaml

    try:
        raw = yaml.load(text, Loader=_spec_loader())  # noqa: S506 (a SafeLoader subclass)
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


def format_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def point_name(swept: Mapping[str, Any]) -> str:
    """A file-name-safe, deterministic name from the swept values, e.g. ``lam=0.1_seed=0``.

    Values with characters outside ``[A-Za-z0-9.+-]`` are replaced, and then (or when the
    name is long) a hash of the exact values is appended, so distinct points stay distinct.
    """
    if not swept:
        return "run"
    raw = "_".join(f"{k}={format_value(v)}" for k, v in swept.items())
    safe = "_".join(
        f"{re.sub(r'[^A-Za-z0-9.+-]', '-', k)}={re.sub(r'[^A-Za-z0-9.+-]', '-', format_value(v))}"
        for k, v in swept.items()
    )
    if safe != raw or len(safe) > 100:
        digest = hashlib.sha1(results.to_json(dict(swept)).encode()).hexdigest()[:8]
        safe = f"{safe[:100]}-{digest}"
    return safe


def fold_dotted(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters with dotted names (``lams.clip``, ``options.clip.pairs``) set inside the
    mapping parameter they start with: ``{"lams": {"clip": 0.1}}``, merged over that
    parameter's own value in ``params`` where it has one. The notebook receives the result."""
    out = {k: v for k, v in params.items() if "." not in k}
    for key, value in params.items():
        if "." not in key:
            continue
        root, *inner, leaf = key.split(".")
        node = out.setdefault(root, {})
        if not isinstance(node, dict):
            raise SweepError(f"{key!r} sets a key inside {root!r}, which is {node!r}, not a "
                             f"mapping")
        out[root] = node = copy.deepcopy(node)
        for part in inner:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SweepError(f"{key!r} sets a key inside {part!r}, which is {child!r}, "
                                 f"not a mapping")
            node = child
        node[leaf] = value
    return out


def plan(spec: Spec) -> list[Point]:
    """The grid points of a spec, in grid order (the last name varies fastest)."""
    swept_names = [k for k in spec.grid if k not in spec.batch]
    points = []
    for combo in itertools.product(*(spec.grid[k] for k in swept_names)):
        swept = dict(zip(swept_names, combo, strict=True))
        params = fold_dotted({**spec.fixed, **{b: list(spec.grid[b]) for b in spec.batch},
                              **swept})
        points.append(Point(point_name(swept), swept, params))
    names = [p.name for p in points]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SweepError(f"two grid points share the file name {dupes[0]!r}; rename a value")
    return points

"""Provenance of a run: versions, device, configuration as canonical JSON, status.

Every result clipkit writes carries these attrs (see ``clipkit.experiments.results``);
training stamps them too, so they live here, below every layer that uses them.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["NAN_MEANS", "STATUS_DONE", "STATUS_FAILED", "provenance", "to_json"]

STATUS_DONE = "done"
STATUS_FAILED = "failed"
#: a result variable's attribute saying what NaN means in it ("ε not in this attack's
#: grid"): its NaN are by design, and a sweep's NaN check does not count them
NAN_MEANS = "nan_means"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(
        f"cannot store {type(obj).__name__} {obj!r} as JSON; "
        "accepted: str, int, float, bool, None, lists, dicts, numpy scalars/arrays, paths"
    )


def to_json(value: Any) -> str:
    """Canonical JSON (sorted keys) of a configuration value; numpy scalars become numbers."""
    return json.dumps(value, sort_keys=True, default=_json_default, allow_nan=True)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _clipkit_version() -> str:
    from clipkit.core import __version__

    return __version__


def _device() -> str:
    """The device this process computes on; torch is consulted only if it is already imported."""
    torch = sys.modules.get("torch")  # a run that never imported torch used no GPU
    if torch is not None and torch.cuda.is_available():
        index = torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def provenance(
    config: Mapping[str, Any] | None = None,
    *,
    device: str | None = None,
    wall_time: float | None = None,
    status: str = STATUS_DONE,
    error: str = "",
) -> dict[str, str | float]:
    """The provenance attrs of one run: versions, device, configuration (JSON), status.

    Args:
        config: the run's full configuration (its parameters); stored as a JSON string.
        device: where it ran; default: the current CUDA device if torch uses one, else "cpu".
        wall_time: seconds the run took; NaN when unknown.
        status: ``"done"`` or ``"failed"``.
        error: the error text of a failed run.
    """
    if status not in (STATUS_DONE, STATUS_FAILED):
        raise ValueError(f"status must be {STATUS_DONE!r} or {STATUS_FAILED!r}, got {status!r}")
    return {
        "clipkit_version": _clipkit_version(),
        "torch_version": _version("torch"),
        "xarray_version": xr.__version__,
        "python_version": platform.python_version(),
        "device": device if device is not None else _device(),
        "config": to_json(dict(config) if config is not None else {}),
        "wall_time": float("nan") if wall_time is None else float(wall_time),
        "status": status,
        "error": error,
    }



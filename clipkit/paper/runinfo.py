"""What the report says about the runs themselves, read from their result files.

Device, number of runs and computing time (the runs' provenance attrs), the data they used
(``data_source``), and the configuration of a sweep's first run: every run-dependent
sentence of the report comes from here, never from constants.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from clipkit.experiments import results

__all__ = ["compute_time", "data_sources", "device_lines", "first_config", "load_sweep"]


def load_sweep(runs: Path, name: str) -> xr.Dataset | None:
    """A sweep's combined result, or None when it is missing or has no finished point."""
    path = runs / name / results.COMBINED_NAME
    if not path.is_file():
        return None
    ds = results.load(path)
    if "status" in ds.variables and not bool((ds["status"] == "done").any()):
        return None
    return ds


def compute_time(runs: Path, names: Sequence[str]) -> dict:
    """Where and how long the finished runs computed, from their result files' attrs.

    Returns ``devices`` (device: number of runs), ``runs`` and ``seconds`` (summed
    ``wall_time``) over the ``done`` point files of the sweeps ``names``.
    """
    devices: dict[str, int] = {}
    seconds, n = 0.0, 0
    for name in names:
        for path in sorted((runs / name / "points").glob("*.nc")):
            with xr.open_dataset(path, engine=results.ENGINE) as ds:
                attrs = dict(ds.attrs)
            if attrs.get("status") != results.STATUS_DONE:
                continue
            n += 1
            dev = str(attrs.get("device") or "unrecorded")
            devices[dev] = devices.get(dev, 0) + 1
            wall = attrs.get("wall_time")
            if isinstance(wall, (int, float, np.floating)) and np.isfinite(wall):
                seconds += float(wall)
    return {"devices": devices, "runs": n, "seconds": seconds}


def device_lines(prov: dict, profile: str) -> list[str]:
    """The report's lines on the device, profile and computing time (from provenance)."""
    devices = prov["devices"]
    where = ", ".join(f"{d} ({k} runs)" if len(devices) > 1 else d
                      for d, k in sorted(devices.items())) or "no finished runs"
    gpu = any(d.startswith("cuda") for d in devices)
    lines = [f"* device: **{where}**; {prov['runs']} finished runs computed for "
             f"{prov['seconds'] / 60:.1f} min in all (from the result files' provenance)."]
    if profile != "full":
        lines.append(
            "* The `full` profile (full data sets, 100 epochs, 3 seeds, the authors' 500 pairs) "
            f"needs a GPU{'' if gpu else '; these runs used none'}. It was not run for this "
            "report, so none of its numbers are reported here. Run it with "
            "`clipkit reproduce --profile full` (or each `clipkit sweep paper/SPEC.yaml "
            "--profile full`) on a GPU machine.")
    return lines


def data_sources(runs: Path, names: Sequence[str]) -> set[str]:
    """The ``data_source`` sentences of the run files (combining drops differing attrs)."""
    found = set()
    for name in names:
        for path in sorted((runs / name / "points").glob("*.nc")):
            with xr.open_dataset(path, engine=results.ENGINE) as ds:
                text = ds.attrs.get("data_source")
            if text:
                found.add(str(text))
    return found


def first_config(ds: xr.Dataset | None) -> dict:
    """The configuration of a sweep's first finished run (the ``config`` JSON)."""
    if ds is None or "config" not in ds:
        return {}
    for text in np.ravel(ds.config.values):
        if isinstance(text, str) and text.startswith("{"):
            return json.loads(text)
    return {}

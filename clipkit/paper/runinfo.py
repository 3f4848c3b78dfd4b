"""What the report says about the runs themselves, read from their result files.

Device, number of runs and computing time (the runs' provenance attrs), the data they used
(``data_source``), and the configuration of a sweep's first run: every run-dependent
sentence of the report comes from here, never from constants.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from clipkit.experiments import results

__all__ = [
    "compute_time", "data_sources", "device_lines", "first_config", "load_sweep",
    "point_attrs", "point_facts", "profile_lines",
]


def load_sweep(runs: Path, name: str) -> xr.Dataset | None:
    """A sweep's combined result, or None when it is missing or has no finished point."""
    path = runs / name / results.COMBINED_NAME
    if not path.is_file():
        return None
    ds = results.load(path)
    if "status" in ds.variables and not bool((ds["status"] == "done").any()):
        return None
    return ds


#: what a published result leaves out: a path's trained weights, the bulk of a table sweep
WEIGHT_PREFIXES = ("param_", "buffer_")


def save_for_explorer(data: dict[str, xr.Dataset | None], folder: Path) -> list[Path]:
    """Each sweep's combined result without its trained weights, as
    ``folder/<sweep>/combined.nc``: what the explorer opens (``sweep_dir``) without the
    sweep being run again. The weights are left out (``param_*``, ``buffer_*``; a rerun of
    the sweep has them): every figure and table is drawn from the other variables."""
    written = []
    for name, ds in data.items():
        if ds is not None:
            slim = ds.drop_vars([v for v in ds.data_vars if str(v).startswith(WEIGHT_PREFIXES)])
            written.append(results.save(slim, folder / name / results.COMBINED_NAME))
    return written


@functools.lru_cache(maxsize=4096)
def _file_attrs(path: str, version: tuple[int, int, int]) -> dict:
    with xr.open_dataset(path, engine=results.ENGINE) as ds:
        return dict(ds.attrs)


def point_attrs(runs: Path, name: str) -> list[dict]:
    """The attrs of each point file of the sweep ``name``, in file-name order.

    Each file is opened once per version (inode, size, mtime): the report asks for the same
    files' attrs several times, and opening a netCDF file costs about 0.1 s.
    """
    out = []
    for path in sorted((runs / name / "points").glob("*.nc")):
        st = path.stat()
        out.append(dict(_file_attrs(str(path), (st.st_ino, st.st_size, st.st_mtime_ns))))
    return out


def compute_time(runs: Path, names: Sequence[str]) -> dict:
    """Where and how long the finished runs computed, from their result files' attrs.

    Returns ``devices`` (device: number of runs), ``runs`` and ``seconds`` (summed
    ``wall_time``) over the ``done`` point files of the sweeps ``names``.
    """
    devices: dict[str, int] = {}
    seconds, n = 0.0, 0
    for name in names:
        for attrs in point_attrs(runs, name):
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
    others = {"paper": "full data sets, 3 seeds, on a CPU: a few hours",
              "full": "paper scale: full data sets, 100 epochs, 3 seeds, the authors' 500 "
                      f"pairs, on a GPU{'' if gpu else ' (these runs had none)'}"}
    others.pop(profile, None)
    if others:
        lines.append(
            "* Not run for this report, so none of their numbers are here: "
            + "; ".join(f"the `{p}` profile ({what})" for p, what in others.items())
            + ". Run one with `clipkit reproduce --profile NAME`; the settings are in "
            "`paper/*.yaml`.")
    return lines


def data_sources(runs: Path, names: Sequence[str]) -> dict[str, list[str]]:
    """The ``data_source`` sentences of the run files (combining drops differing attrs),
    each with the sweeps (of ``names``, in that order) whose runs say it."""
    found: dict[str, list[str]] = {}
    for name in names:
        for attrs in point_attrs(runs, name):
            text = attrs.get("data_source")
            if text and name not in found.setdefault(str(text), []):
                found[str(text)].append(name)
    return found


def first_config(ds: xr.Dataset | None) -> dict:
    """The configuration of a sweep's first finished run (the ``config`` JSON)."""
    if ds is None or "config" not in ds:
        return {}
    for text in np.ravel(ds.config.values):
        if isinstance(text, str) and text.startswith("{"):
            return json.loads(text)
    return {}


def point_facts(runs: Path, name: str) -> list[dict]:
    """Per finished point of a sweep: its notebook parameters (``config``), the dataset,
    the method's settings and the image counts it recorded (attrs of the point file)."""
    facts = []
    for attrs in point_attrs(runs, name):
        if attrs.get("status") != results.STATUS_DONE:
            continue
        cfg = attrs.get("config", "{}")
        method = attrs.get("method_config", "{}")
        facts.append({
            "config": json.loads(cfg) if isinstance(cfg, str) else dict(cfg),
            "method_config": json.loads(method) if isinstance(method, str) else {},
            "train_images": attrs.get("train_images"),
            "validation_images": attrs.get("validation_images"),
        })
    return facts


def _values(facts: list[dict], get) -> str:
    """The distinct values of ``get(fact)`` (None dropped), sorted, joined: "30" or "30, 60"."""
    found = sorted({v for f in facts if (v := get(f)) is not None}, key=str)
    return ", ".join(f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
                     for v in found) or "–"


def _classification_line(name: str, facts: list[dict]) -> str:
    def cfg(key: str, among: list[dict] = facts) -> str:
        return _values(among, lambda f: f["config"].get(key))

    by_data: dict[str, list[dict]] = {}
    for f in facts:
        by_data.setdefault(str(f["config"].get("dataset")), []).append(f)
    data = "; ".join(
        f"{d}: {_values(fs, lambda f: f['train_images'])} training images"
        + (f" + {_values(fs, lambda f: f['validation_images'] or None)} held out for "
           "validation" if any(f["validation_images"] for f in fs) else "")
        for d, fs in sorted(by_data.items()))
    clip = [f for f in facts if f["method_config"].get("method") == "CLIP"]
    select = cfg("select")
    parts = [
        f"**{name}** ({len(facts)} runs): {data}",
        f"{cfg('epochs')} epochs",
        f"seeds {cfg('seed')}",
        f"CLIP with {_values(clip, lambda f: f['method_config'].get('pairs'))} pairs"
        if clip else "no CLIP runs",
        f"weights tested: {select}" + (
            f" (the authors' rule: validation under their PGD with {cfg('val_steps')} "
            "iterations)" if "authors" in select else ""),
        f"attacks and bracket on {cfg('n_eval')} test images (the authors' PGD "
        f"{cfg('authors_pgd_steps')} iterations, clipkit's PGD {cfg('pgd_steps')}"
        + (f" with {cfg('pgd_restarts')} restarts"
           if any(f["config"].get("pgd_restarts", 1) != 1 for f in facts) else "") + ")",
    ]
    if any(f["config"].get("curve_every") for f in facts):
        parts.append(f"learning curves every {cfg('curve_every')} epochs on "
                     f"{cfg('n_curve')} test images")
    return "* " + "; ".join(parts) + "."


def profile_lines(runs: Path, names: Sequence[str]) -> list[str]:
    """What each sweep ran, read from its finished points' configurations."""
    lines = []
    for name in names:
        facts = point_facts(runs, name)
        if not facts:
            continue
        if any("dataset" in f["config"] and "n_eval" in f["config"] for f in facts):
            lines.append(_classification_line(name, facts))
            continue
        keys = [k for k in ("n", "n_train", "epochs", "hidden", "pairs")
                if any(k in f["config"] for f in facts)]
        lines.append(f"* **{name}** ({len(facts)} runs): " + "; ".join(
            f"{k} {_values(facts, lambda f, k=k: _plain(f['config'].get(k)))}" for k in keys)
            + ".")
    return lines


def _plain(value):
    return str(value) if isinstance(value, (list, dict)) else value

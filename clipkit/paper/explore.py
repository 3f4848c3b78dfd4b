"""The sweep explorer behind ``notebooks/explore.ipynb``: open a sweep, choose, redraw in place.

It opens the result of any sweep of the paper's notebooks, recognised by its variables:

* **classification** (``classification.ipynb``: ``paper/tradeoff.yaml``, ``table.yaml``):
  accuracy under one attack against ε, the test accuracy per epoch, and the trade-off
  (accuracy, robustness, Lipschitz bracket) against λ; a line per method, λ and setting;
* **theory** (``lambda_to_constant.ipynb``: ``paper/theory.yaml``): the fits at several λ,
  Lip(f_λ) against λ with the rate bound, the distance to the label mean;
* **regression** (``regression.ipynb``: ``paper/regression.yaml``): the fits of each method.

:func:`controls` lists a choice per swept dimension (:data:`ALL`, where the figures can
draw a line per value), :func:`figures` draws a selection, and :class:`Explorer`
puts ipywidgets dropdowns over the figures, which each change redraws in place (IPython
display handles: the figures stay in a saved or papermill-executed notebook).
:func:`summary` is what the notebook writes: one number per run and λ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from clipkit.experiments import results
from clipkit.paper import plots

__all__ = ["ALL", "KINDS", "MAKE_A_SWEEP", "Explorer", "controls", "figures", "kind", "open_sweep",
           "summary", "summary_tables"]

#: sweep kinds, each recognised by a variable only its notebook writes
KINDS = {"classification": "robust_acc", "theory": "exact_f", "regression": "test_mse_target"}
#: the command that makes a sweep to explore (run from the repository's root)
MAKE_A_SWEEP = "clipkit sweep paper/tradeoff.yaml --profile quick --out runs/tradeoff"
_SLOTS = {"classification": 3, "theory": 3, "regression": 1}  # figure areas per kind
ALL = "all"  # the choice of every value of a dimension (a line each)
#: how a dimension is named to a reader (a dropdown, the description), as the docs name it
DIM_NAMES = {"lam": "λ", "last_activation": "setting"}


def open_sweep(folder: str | os.PathLike[str]) -> xr.Dataset:
    """A sweep's combined Dataset: ``folder/combined.nc``, else its run files combined.

    A missing folder, or one without results, raises FileNotFoundError naming the
    command that makes a sweep.
    """
    folder = Path(folder)
    combined = folder / results.COMBINED_NAME
    if combined.is_file():
        return results.load(combined)
    has_runs = folder.is_dir() and any(
        (folder / "points" if (folder / "points").is_dir() else folder).glob("*.nc"))
    if not has_runs:
        raise FileNotFoundError(
            f"no sweep in {str(folder.absolute())!r} (no {results.COMBINED_NAME}, no run "
            f"files). Make one from the repository's root with\n    {MAKE_A_SWEEP}\n"
            f"(a few minutes on a CPU; paper/theory.yaml or paper/regression.yaml likewise) "
            f"and set sweep_dir to its folder (from notebooks/: \"../runs/tradeoff\"); the "
            f"paper's own sweeps are in paper/results/ (from notebooks/: "
            f"\"../paper/results/tradeoff\"), which `make reproduce` rewrites")
    return results.open_sweep(folder)


def kind(ds: xr.Dataset) -> str:
    """Which notebook's sweep ``ds`` is: classification, theory or regression."""
    for name, var in KINDS.items():
        if var in ds:
            return name
    raise ValueError(
        f"not a sweep of classification, lambda_to_constant or regression.ipynb: it has "
        f"none of the variables {', '.join(KINDS.values())} (it has "
        f"{', '.join(map(str, ds.data_vars)) or 'no variables'})")


def _swept(ds: xr.Dataset) -> list[str]:
    """The sweep's dimensions (those of its per-run ``status``), seeds last."""
    dims = [str(d) for d in ds["status"].dims] if "status" in ds else []
    return sorted(dims, key=lambda d: d == "seed")


def _prepare(ds: xr.Dataset) -> xr.Dataset:
    """One-value settings of a classification sweep as dimensions (so legends name them)."""
    if kind(ds) == "classification":
        for dim in ("method", "last_activation", "dataset"):
            if dim in ds.coords and dim not in ds.dims:
                ds = ds.expand_dims(dim)
    return ds


def controls(ds: xr.Dataset) -> dict[str, list[tuple[str, Any]]]:
    """The choices for ``ds``: name -> [(label, value)], the first being the default.

    The value :data:`ALL` draws every value of that dimension as its own line.
    """
    ds = _prepare(ds)
    k = kind(ds)
    out: dict[str, list[tuple[str, Any]]] = {}
    if k == "classification":
        dims = [d for d in ("method", "last_activation", "dataset") if d in ds.dims]
        dims += [d for d in _swept(ds) if d not in dims and d != "seed"]
        for dim in dims:
            values = [(plots.line_label(dim, v.item()), v.item()) for v in ds[dim]]
            many = [(ALL, ALL)] if len(values) > 1 else []
            out[dim] = values[:1] + many + values[1:] if dim == "dataset" else many + values
        out["lam"] = lam_options(ds)
        out["attack"] = [(plots.ATTACK_LABELS.get(str(a), str(a)), str(a))
                         for a in ds.attack.values]
        return out
    if k == "theory" and "power" in ds.dims:
        out["power"] = [(f"p = {int(p)}", int(p)) for p in ds.power.values]
    for dim in _swept(ds):
        if dim not in out:  # the figures show one run: one value each
            out[dim] = [(plots.line_label(dim, v.item()), v.item()) for v in ds[dim]]
    return out


def lam_options(ds: xr.Dataset, choice: Mapping[str, Any] | None = None
                ) -> list[tuple[str, Any]]:
    """The λ choices of a classification sweep: :data:`ALL`, then each λ at which some run
    of the other choices (method, setting, …) has a result; a sweep's λ are the union over
    its methods, and a λ that the chosen method was never run at would draw nothing."""
    ds = _prepare(ds)
    d = _select(ds, choice or {}, skip=("attack", "lam"))
    ran = d["clean_acc"].notnull()
    ran = ran.any([dim for dim in ran.dims if dim != "lam"])
    return [(ALL, ALL)] + [(plots.line_label("lam", float(v)), float(v))
                           for v, r in zip(ds.lam.values, ran.values, strict=True) if r]


def _select(ds: xr.Dataset, choice: Mapping[str, Any], skip: tuple[str, ...] = ()) -> xr.Dataset:
    """``ds`` at the chosen values; a chosen value keeps its dimension (length 1), so the
    legends still name it; :data:`ALL` keeps all values."""
    picks = {d: [_position(ds, d, v)] for d, v in choice.items()
             if not (isinstance(v, str) and v == ALL) and d in ds.dims and d not in skip}
    return ds.isel(picks)


def _position(ds: xr.Dataset, dim: str, value: Any) -> int:
    # by position: pandas reads a list of booleans (last_activation) as a mask, not labels
    return [v.item() for v in ds[dim]].index(value)


def _one_run(ds: xr.Dataset, choice: Mapping[str, Any]) -> xr.Dataset:
    return ds.isel({d: _position(ds, d, v) for d, v in choice.items()
                    if d in ds.dims and d != "power"})


def _legend_outside(fig: plt.Figure) -> plt.Figure:
    """The legend of a one-panel figure to the right of it (a line per choice can be many)."""
    (ax,) = fig.axes
    handles, labels = ax.get_legend_handles_labels()
    moved = ax.get_legend() is not None or bool(fig.legends)
    for legend in [ax.get_legend(), *fig.legends]:
        if legend is not None:
            legend.remove()  # robustness' own sits under its panels: too wide for one panel
    if moved and handles:
        fig.set_figheight(fig.get_figwidth() * 0.75)
        fig.tight_layout()
        ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0)
    return fig


def _note(text: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 0.6))
    ax.axis("off")
    ax.text(0, 0.5, text, va="center", fontsize=9)
    return fig


def _nothing(d: xr.Dataset, var: str) -> plt.Figure | None:
    """A note saying why ``d`` (one choice) has nothing to draw, where ``d[var]`` is all NaN:
    its runs' status and first error (a failed point, a λ this method was not run at)."""
    if var not in d or not bool(d[var].isnull().all()):
        return None
    status = sorted({str(s) for s in np.atleast_1d(d["status"].values)}) if "status" in d else []
    errors = [str(e) for e in np.atleast_1d(d["error"].values)
              if str(e) not in ("", "nan")] if "error" in d else []
    why = f"runs {', '.join(status)}" if status else "no values"
    if errors:
        why += f": {errors[0][:160]}"
    return _note(f"nothing to draw for this choice ({why})")


def figures(ds: xr.Dataset, choice: Mapping[str, Any] | None = None) -> list[plt.Figure]:
    """The explorer's figures for one choice (see :func:`controls`; missing: defaults)."""
    ds = _prepare(ds)
    choice = {**{n: opts[0][1] for n, opts in controls(ds).items()}, **(choice or {})}
    k = kind(ds)
    if k == "classification":
        attack = choice["attack"]
        d = _select(ds, choice, skip=("attack",))
        wide = _select(ds, choice, skip=("attack", "lam"))
        empty = _nothing(d, "clean_acc")
        if empty is not None:
            return [empty]
        out = [_legend_outside(plots.robustness(d, attacks=[attack])),
               _legend_outside(plots.history(d))]
        if wide.sizes.get("lam", 1) > 1:
            out.append(plots.tradeoff(wide, attack=attack))
        else:
            out.append(_note("one λ in this sweep: no trade-off curve over λ"))
        return out
    run = _one_run(ds, choice)
    empty = _nothing(run, KINDS[k])
    if empty is not None:
        return [empty]
    if k == "theory":
        power = int(choice.get("power", 1))
        return [plots.theory_fits(run, power=power), plots.theory_lipschitz(run, power=power),
                plots.theory_distance(run, power=power)]
    return [plots.regression_fits(run)]


def summary(ds: xr.Dataset) -> xr.Dataset:
    """One number per run (and λ): the variables without a curve dimension (epoch, x_grid,
    sample, eps) and the runs' status; for a classification sweep also the accuracy under
    each attack at its largest ε (``robust_acc_max_eps``, ``eps_max``); a regression sweep's
    exact constant named by its interval (``lip_exact_on_[-1, 1]``), which the global
    bracket beside it may exceed."""
    curves = {"epoch", "x_grid", "sample", "eps"}
    keep = [v for v, da in ds.data_vars.items() if not curves & set(da.dims)
            and (v == "status" or da.dtype.kind not in "USO")]  # no texts: config, error, ...
    out = ds[keep]
    if kind(ds) == "classification":
        per_attack = [ds.robust_acc.sel(attack=a).dropna("eps", how="all") for a in ds.attack]
        out = out.assign(
            robust_acc_max_eps=xr.concat([r.isel(eps=-1, drop=True) for r in per_attack],
                                         dim="attack").assign_coords(attack=ds.attack.values),
            eps_max=("attack", [float(r.eps[-1]) for r in per_attack]),
        )
    if "lip_exact" in out and "x_grid" in ds.coords:  # beside a global bracket: say where
        lo, hi = float(ds.x_grid.min()), float(ds.x_grid.max())
        out = out.rename(lip_exact=f"lip_exact_on_[{lo:g}, {hi:g}]")
    return out.drop_attrs()


def summary_tables(summary_ds: xr.Dataset) -> list[Any]:
    """The summary as tables (pandas DataFrames), one per set of dimensions: a single
    ``to_dataframe()`` repeats each value along the dimensions it does not have (a theory
    sweep's exact and CLIP values once per weight-decay λ)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, da in summary_ds.data_vars.items():
        groups.setdefault(tuple(da.dims), []).append(str(name))
    return [summary_ds[names].to_dataframe().dropna(how="all") for names in groups.values()]


def describe(ds: xr.Dataset) -> str:
    """One line: the kind of sweep, its dimensions and how its runs ended."""
    dims = ", ".join(_count(ds, d) for d in _swept(ds)) or "one run"
    line = f"{kind(ds)} sweep: {dims}"
    if "status" in ds and ds.status.ndim:
        states, counts = np.unique(ds.status.values, return_counts=True)
        line += "; runs: " + ", ".join(f"{c} {s}" for s, c in zip(states, counts, strict=True))
    return line


def _count(ds: xr.Dataset, dim: str) -> str:
    """``3 seeds (0, 1, 2)``, ``2 datasets (fashion-mnist, mnist)``, ``7 λ values``: a swept
    dimension's size, its values where they are few."""
    n = ds.sizes[dim]
    name = "λ value" if dim == "lam" else DIM_NAMES.get(dim, dim.replace("_", " "))
    shown = [plots.line_label(dim, v.item()).split(" = ")[-1] for v in ds[dim]]
    values = f" ({', '.join(shown)})" if n <= 5 else ""
    return f"{n} {name}{'s' if n > 1 else ''}{values}"


class Explorer:
    """Dropdowns over the figures of a sweep; a change redraws the figures in place.

    ``Explorer(ds).show()`` displays the controls and, below them, one display area per
    figure; each change of a control replaces those figures (an error is shown there too,
    rather than only in JupyterLab's log console).
    """

    def __init__(self, ds: xr.Dataset, **initial: Any) -> None:
        import ipywidgets as widgets

        self.ds = _prepare(ds)
        self.kind = kind(self.ds)
        self.redraws = 0
        self.widgets: dict[str, widgets.Dropdown] = {}
        for name, options in controls(self.ds).items():
            value = initial.get(name, options[0][1])
            if value not in [v for _, v in options]:
                raise ValueError(f"{name} = {value!r} is not in this sweep; it has: "
                                 f"{', '.join(repr(v) for _, v in options)}")
            self.widgets[name] = widgets.Dropdown(
                options=options, value=value,
                description=DIM_NAMES.get(name, name),
                style={"description_width": "initial"}, layout={"width": "max-content"})
        self._handles: list[Any] = []
        self._refreshing = False

    @property
    def choice(self) -> dict[str, Any]:
        return {name: w.value for name, w in self.widgets.items()}

    def _draw(self) -> list[Any]:
        try:
            figs = figures(self.ds, self.choice)
        except Exception as exc:  # shown where the figures were, not only in a log
            figs = [_note(f"cannot draw {self.choice}: {type(exc).__name__}: {exc}")]
        figs += [None] * (_SLOTS[self.kind] - len(figs))
        for f in figs:
            if f is not None:
                plt.close(f)  # displayed by hand; the inline backend must not show it again
        return figs

    def show(self) -> None:
        """Display the controls and the figures (call once per cell run)."""
        import ipywidgets as widgets
        from IPython.display import HTML, display

        display(widgets.HBox(list(self.widgets.values()),
                             layout={"flex_flow": "row wrap"}))
        self._handles = [display(f if f is not None else HTML(""), display_id=True)
                         for f in self._draw()]
        for w in self.widgets.values():
            w.observe(self._changed, names="value")

    def _changed(self, change: Any) -> None:
        if self._refreshing:
            return  # the λ list being replaced: one redraw follows, from _changed's caller
        lam = self.widgets.get("lam")
        if self.kind == "classification" and lam is not None and change["owner"] is not lam:
            self._refresh_lam(lam)
        self.redraw()

    def _refresh_lam(self, lam: Any) -> None:
        """Offer the λ at which the chosen method and setting were run; keep the chosen
        one where it is among them, else show all."""
        options = lam_options(self.ds, self.choice)
        values = [v for _, v in options]
        if values == [v for _, v in lam.options]:
            return
        keep = lam.value if lam.value in values else ALL
        self._refreshing = True
        try:
            lam.options = options
            lam.value = keep
        finally:
            self._refreshing = False

    def redraw(self, change: Any = None) -> None:
        """Draw the current choice into the figure areas."""
        from IPython.display import HTML

        for handle, f in zip(self._handles, self._draw(), strict=True):
            if handle is not None:  # None: no IPython display (a script)
                handle.update(f if f is not None else HTML(""))
        self.redraws += 1

"""The figures, as functions of result Datasets (matplotlib; each returns its Figure).

Every function takes the Dataset a notebook wrote (or a sweep's combined Dataset) and
draws from its variables only, so a figure can be regenerated from the result file alone.
:func:`save` writes a figure as PNG and PDF (what the paper pipeline does).

* theory (``lambda_to_constant.ipynb``): :func:`theory_fits`, :func:`theory_lipschitz`,
  :func:`theory_distance`, :func:`theory_power` (drawn in ``clipkit.paper.theory_plots``);
* regression (``regression.ipynb``): :func:`regression_fits`;
* classification (``classification.ipynb``, one run or a sweep): :func:`robustness`,
  :func:`history`, :func:`learning_curves`, :func:`tradeoff`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullLocator

from clipkit.paper.labels import LABEL_ORDER, METHOD_NAMES, line_label, var_label
from clipkit.paper.rows import certified_at, run_of
from clipkit.paper.theory_plots import theory_distance, theory_fits, theory_lipschitz, theory_power

__all__ = [
    "ATTACK_LABELS", "METHOD_NAMES", "history", "learning_curves", "line_label",
    "regression_fits", "robustness", "save", "theory_distance", "theory_fits",
    "theory_lipschitz", "theory_power", "tradeoff", "warmups",
]

ATTACK_LABELS = {
    "noise": "Gaussian noise (σ)",
    "fgsm": "FGSM (ℓ∞ ε)",
    "pgd_l2": "PGD-ℓ2 (ε)",
    "pgd_linf": "PGD-ℓ∞ (ε)",
    "pgd_l2_authors": "the authors' PGD-ℓ2 (ε)",
}
#: the robustness panels: inches a side, at most this many a row (a notebook shrinks a
#: wider figure to its width, and its fonts with it), and the axis labels' font size
PANEL, PANELS_PER_ROW, FONT = 3.4, 3, 10
#: the learning curves' panels: history variable -> its label
CURVES = {
    "test_acc": var_label("test_acc"),
    "curve_pgd_l2_authors": "PGD-ℓ2 ε=2, authors' attack",
    "curve_pgd_l2": "PGD-ℓ2 ε=2, clipkit's",
}


def _attack_at(attack: str, eps: float) -> str:
    """An attack at one radius, as a legend names it: ``Gaussian noise σ = 1``,
    ``PGD-ℓ2 ε = 2`` (:data:`ATTACK_LABELS` without the brackets around the radius)."""
    name = re.sub(r" \((.*)\)$", r" \1", ATTACK_LABELS.get(attack, attack))
    return f"{name} = {eps:g}" if name != attack else f"{attack} at {eps:g}"


def save(fig: plt.Figure, path: str | os.PathLike[str], dpi: int = 110) -> list[Path]:
    """Write ``fig`` as ``path.png`` and ``path.pdf`` (any suffix of ``path`` is replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in (".png", ".pdf"):
        target = path.with_suffix(ext)
        fig.savefig(target, dpi=dpi, bbox_inches="tight", metadata=_metadata(ext))
        out.append(target)
    return out


def _metadata(ext: str) -> dict:
    # no creation dates: regenerated figures differ only when their content does
    return {"CreationDate": None} if ext == ".pdf" else {"Software": None}


# --------------------------------------------------------------------------- regression


def regression_fits(ds: xr.Dataset) -> plt.Figure:
    """Fits of each method over x with the data and the noise-free target; test errors
    and Lipschitz brackets in the legend. A sweep over seeds: the first seed's run."""
    seed = ""
    if "seed" in ds.dims:  # each seed has its own data and fits: draw one run
        ds, seed = ds.isel(seed=0), f" (seed {ds.seed.values[0]} of {ds.sizes['seed']})"
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.scatter(ds.x, ds.y, s=8, color="0.6", label="training data")
    ax.plot(ds.x_grid, ds.target, "k:", lw=1, label="target 1 + sin 2πx + x²")
    for i, m in enumerate(np.atleast_1d(ds.method.values)):
        d = ds.sel({"method": m}) if "method" in ds.dims else ds
        if "diverged" in d and int(d.diverged) > 0:  # nothing to draw: say why in the legend
            ax.plot([], [], color=f"C{i}", label=f"{m}: diverged in epoch {int(d.diverged)}")
            continue
        label = (f"{m}: test MSE {float(d.test_mse):.3f}, "
                 f"Lip ∈ [{float(d.lip_lower):.2f}, {float(d.lip_upper):.2f}]")
        ax.plot(ds.x_grid, d.f, color=f"C{i}", label=label)
    ax.axhline(float(ds.label_mean), color="C3", ls="--", lw=0.8, label="label mean")
    ax.set_xlabel("x")
    ax.set_ylabel("f(x)")
    ax.set_title(f"1-D nonlinear regression{seed}")
    # under the panel: inside, it covered the data around the first peak
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2,
              frameon=False)
    fig.set_figheight(5.4)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- classification


def _series(ds: xr.Dataset, var: str, keep: Sequence[str]) -> list[tuple[str, xr.DataArray]]:
    """Split ``ds[var]`` into labelled lines over the dims not in ``keep`` (NaN lines dropped).

    Seeds are averaged; other dims label the lines (see :func:`line_label`): method, λ and
    the setting always, the others where they have several values.
    """
    da = ds[var]
    if "seed" in da.dims:
        da = da.mean("seed")
    other = sorted((d for d in da.dims if d not in keep),
                   key=lambda d: LABEL_ORDER.index(d) if d in LABEL_ORDER else len(LABEL_ORDER))
    if not other:
        return [("", da)]
    stacked = da.stack(_line=other)
    lines = []
    for k in range(stacked.sizes["_line"]):
        line = stacked.isel(_line=k)
        if bool(np.isnan(line.values).all()):
            continue
        label = ", ".join(line_label(d, line[d].item()) for d in other
                          if d in LABEL_ORDER[:3] or da.sizes[d] > 1)
        lines.append((label, line.drop_vars(["_line", *other], errors="ignore")))
    return lines


def _images(ds: xr.Dataset, var: str) -> str:
    """' (N test images)' from ``var``'s description, where it says how many: the clean
    accuracy and the attacks are measured on different numbers of test images."""
    found = re.search(r"on (?:the )?(\d+) test images", str(ds[var].attrs.get("description", "")))
    return f" ({found.group(1)} test images)" if found else ""


def _check_attacks(ds: xr.Dataset, attacks: Sequence[str], who: str) -> None:
    """A ValueError naming an attack the result does not have, and the ones it has."""
    have = [str(a) for a in ds.attack.values] if "attack" in ds.coords else []
    for a in attacks:
        if a not in have:
            raise ValueError(f"{who}: attack {a!r} is not in this result; it has: "
                             f"{', '.join(map(repr, have)) or 'none'}")


def robustness(ds: xr.Dataset, attacks: Sequence[str] | None = None) -> plt.Figure:
    """Accuracy under attack against ε, one panel per attack (up to three a row), one line
    per configuration; fonts sized for a notebook, which shrinks a wide figure to fit."""
    attacks = list(ds.attack.values) if attacks is None else list(attacks)
    _check_attacks(ds, attacks, "robustness")
    ncols = min(PANELS_PER_ROW, len(attacks))
    nrows = -(-len(attacks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL * ncols, PANEL * nrows), squeeze=False)
    for ax in axes.flat[len(attacks):]:
        fig.delaxes(ax)  # the last row's empty places
    for ax, att in zip(axes.flat, attacks, strict=False):
        sub = ds.sel(attack=att)
        for label, line in _series(sub, "robust_acc", ["eps"]):
            ok = ~np.isnan(line.values)
            ax.plot(line.eps.values[ok], line.values[ok], "o-", ms=4, label=label)
        ax.set_title(ATTACK_LABELS.get(str(att), str(att)), fontsize=FONT + 1)
        ax.set_xlabel("σ (noise level)" if str(att) == "noise" else "ε (radius)", fontsize=FONT)
        ax.tick_params(labelsize=FONT - 1)
        ax.set_ylim(0, 1)
    for row in axes:
        row[0].set_ylabel(f"accuracy{_images(ds, 'robust_acc')}", fontsize=FONT)
    # one legend under the panels, where it covers no line
    handles, labels = axes[0][0].get_legend_handles_labels()
    height = PANEL * nrows
    if handles:
        ncol = min(3, len(handles))
        legend_height = 0.3 * -(-len(handles) // ncol)  # inches: 0.3 per row
        fig.set_figheight(height + legend_height)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=FONT - 1,
                   frameon=False)
        fig.tight_layout(rect=(0, legend_height / fig.get_figheight() + 0.02, 1, 1))
    else:
        fig.tight_layout()
    return fig


def history(ds: xr.Dataset, var: str = "test_acc") -> plt.Figure:
    """A history variable (default test accuracy) against the epoch, one line per
    configuration (the mean over seeds); a dashed line marks where a warm-up at λ = 0 ends
    (see :func:`warmups`), circles the epochs whose weights some seed kept and tested
    (``selected``), whose accuracy the tables and the λ panel report."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    kept = dict(_series(ds, "selected", ["epoch"])) if "selected" in ds else {}
    for i, (label, line) in enumerate(_series(ds, var, ["epoch"])):
        ax.plot(line.epoch, line, color=f"C{i}", label=label)
        chosen = kept.get(label)
        if chosen is not None and bool((chosen > 0).any()):
            at = chosen.epoch.values[chosen.values > 0]
            ax.plot(at, line.sel(epoch=at), "o", mfc="none", color=f"C{i}", ms=7,
                    label="_kept")
    if any(bool((c > 0).any()) for c in kept.values()):
        ax.plot([], [], "o", mfc="none", color="0.3", label="tested epoch (a seed's kept weights)")
    last = int(ds.epoch.max()) if "epoch" in ds.coords and ds.sizes.get("epoch") else 0
    for w in warmups(ds):
        if w < last:  # a warm-up as long as the run would only stretch the axis
            ax.axvline(w, color="0.3", ls="--", lw=1,
                       label=f"end of warm-up (λ = 0 for {w} epoch{'s' if w > 1 else ''})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 2.5
    ax.set_xlabel("epoch")
    seeds = ds.sizes.get("seed", 1) if "seed" in ds[var].dims else 1
    ax.set_ylabel(var_label(var) + (f" (mean of {seeds} seeds)" if seeds > 1 else ""))
    if var.endswith("acc"):
        ax.set_ylim(0, 1)  # as on every accuracy axis: a zoomed 0.08-0.12 read as a big change
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def warmups(ds: xr.Dataset) -> list[int]:
    """The warm-ups of ``ds``'s runs: how many epochs trained at λ = 0 before the penalty
    started (a ``Warmup`` or ``Discrepancy`` schedule), those > 0, from ``method_config``
    (an attr, or a variable where a sweep's runs differ)."""
    if "method_config" in ds.attrs:
        texts = [ds.attrs["method_config"]]
    else:
        texts = np.ravel(ds["method_config"].values) if "method_config" in ds else []
    found = set()
    for text in texts:
        try:
            schedule = json.loads(str(text)).get("schedule")
        except (ValueError, AttributeError):  # a failed run's "", a filled-in "nan"
            continue
        if isinstance(schedule, dict) and schedule.get("schedule") in ("Warmup", "Discrepancy"):
            epochs = schedule.get("epochs" if schedule["schedule"] == "Warmup" else "warmup", 0)
            if isinstance(epochs, int) and epochs > 0:
                found.add(epochs)
    return sorted(found)


def learning_curves(ds: xr.Dataset, methods: Sequence[str] = ("standard", "clip"),
                    labels: Sequence[str] = ("none", "CLIP")) -> plt.Figure:
    """Accuracy per epoch, clean and under both PGD-ℓ2 attacks, for ``methods``.

    One column per setting (``last_activation``: published, corrected), one row per
    variable of :data:`CURVES` the result has; per method the mean over seeds (line) and
    their range (band). A dotted line marks the first epoch with λ > 0; dots mark the
    epochs whose weights were tested (``selected``), at their clean accuracy.
    """
    rows = [v for v in CURVES if v in ds]
    if not rows or "lam_epoch" not in ds:
        raise ValueError(f"learning_curves needs a classification result with a history "
                         f"({', '.join(CURVES)} and lam_epoch); this one has "
                         f"{', '.join(map(str, ds.data_vars)) or 'no variables'}")
    lasts = sorted(ds.last_activation.values, reverse=True) if "last_activation" in ds.dims \
        else [None]  # the published setting first
    fig, axes = plt.subplots(len(rows), len(lasts), figsize=(5.2 * len(lasts), 2.6 * len(rows)),
                             squeeze=False, sharex=True, sharey="row")
    for j, last in enumerate(lasts):
        d = ds if last is None else ds.sel(last_activation=last)
        title = "published (sigmoid on logits)" if last else "corrected model"
        axes[0][j].set_title(title if last is not None else "", fontsize=10)
        for c, (method, label) in enumerate(zip(methods, labels, strict=True)):
            if "method" in d.dims and method not in d.method.values:
                continue
            m = d.sel({"method": method}) if "method" in d.dims else d
            m = run_of(m)
            for i, var in enumerate(rows):
                da = m[var]
                if "seed" not in da.dims:
                    da = da.expand_dims("seed")
                ok = ~np.isnan(da.values).all(axis=0)
                ep = da.epoch.values[ok]
                mean = da.mean("seed").values[ok]
                ax = axes[i][j]
                seeds = int(da.notnull().any("epoch").sum())  # a failed run has none
                ax.plot(ep, mean, "o-" if ok.sum() < len(ok) else "-", ms=2.5, color=f"C{c}",
                        label=f"{label} ({seeds} seeds)")
                ax.fill_between(ep, da.min("seed").values[ok], da.max("seed").values[ok],
                                color=f"C{c}", alpha=0.2, lw=0)
            on = (m.lam_epoch > 0).values.reshape(-1, m.sizes["epoch"]).any(axis=0)
            if on.any():
                for ax in axes[:, j]:
                    ax.axvline(float(m.epoch.values[on.argmax()]), color=f"C{c}", ls=":", lw=1)
            if "selected" in m and rows[0] == "test_acc":
                sel = m.selected.values.reshape(-1, m.sizes["epoch"])
                acc = m.test_acc.values.reshape(-1, m.sizes["epoch"])
                for s_sel, s_acc in zip(sel, acc, strict=True):
                    if np.isfinite(s_sel).all():
                        k = int(s_sel.argmax())
                        axes[0][j].plot(m.epoch.values[k], s_acc[k], "o", ms=6, mfc="none",
                                        color=f"C{c}")
    for i, var in enumerate(rows):
        axes[i][0].set_ylabel(CURVES[var], fontsize=8)
        for ax in axes[i]:
            ax.set_ylim(0, 1)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def tradeoff(ds: xr.Dataset, attack: str = "pgd_l2", eps: float | None = None) -> plt.Figure:
    """The accuracy–robustness–Lipschitz trade-off as λ varies.

    Left: clean accuracy, accuracy under ``attack`` at ``eps`` (default: the largest ε of
    this attack's grid) and, for an ℓ2 attack, the certified ℓ2 accuracy at ε = 0.1
    (``certified_acc``, where the results have it; the nearest positive ε of its grid)
    against λ. Right: the Lipschitz bracket
    [lower, upper] against λ (log scale).
    """
    if "lam" not in ds.dims:
        raise ValueError("tradeoff needs a result over λ (a 'lam' dimension)")
    _check_attacks(ds, [attack], "tradeoff")
    sub = ds.sel(attack=attack)
    grid = sub.robust_acc.dropna("eps", how="all").eps  # this attack's ε (others differ)
    if grid.size == 0:
        raise ValueError(f"tradeoff: no accuracy under {attack!r} in this result")
    # the largest ε of the grid by default, else the grid's nearest to the one asked for
    eps = float(grid.max()) if eps is None else float(grid.sel(eps=float(eps), method="nearest"))
    sub = sub.sel(eps=eps)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    lam = ds.lam.values
    pos = lam[lam > 0]
    zero_at = pos.min() / 3 if len(pos) else 1.0  # λ = 0 drawn left of the smallest λ
    xs = np.where(lam > 0, lam, zero_at)
    # clean accuracy and the attacks may count different test images: the legend says which
    curves = [(ax, ds, "clean_acc", "o-", f"clean{_images(ds, 'clean_acc')}"),
              (ax, sub, "robust_acc", "s--", f"{_attack_at(attack, eps)}"
                                             f"{_images(ds, 'robust_acc')}")]
    if "certified_acc" in ds and attack.startswith("pgd_l2"):
        cert, c_eps = certified_at(ds.certified_acc)  # the report column's radius
        if np.isfinite(c_eps):
            curves.append((ax, xr.Dataset({"certified_acc": cert}), "certified_acc", "d-.",
                           f"certified ℓ2, ε = {c_eps:g}{_images(ds, 'certified_acc')}"))
    curves += [(bx, ds, "lip_lower", "o-", "lower"), (bx, ds, "lip_upper", "v:", "upper")]
    # colour: the configuration (method, setting, ...); marker and line style: the measure.
    # One legend entry each, not one per pair: 4 configurations x 5 measures made 20
    # entries that covered the panels.
    configs: dict[str, str] = {}
    for a, d, var, style, name in curves:
        draw = a.semilogx if a is ax else a.loglog
        for i, (label, line) in enumerate(_series(d, var, ["lam"])):
            ok = ~np.isnan(line.values)
            draw(xs[ok], line.values[ok], style, color=f"C{i}",  # the line's full name
                 label=f"{label} — {name}" if label else name)
            configs.setdefault(label, f"C{i}")
    ticks = sorted(set(xs.tolist()))  # every λ of the sweep labelled, λ = 0 as "0"
    names = ["0" if t == zero_at and 0 in lam else f"{t:g}" for t in ticks]
    for a in (ax, bx):
        a.set_xticks(ticks, names)
        a.xaxis.set_minor_locator(NullLocator())  # no unlabelled ticks between the λ
        a.set_xlabel("λ (log scale; λ = 0 drawn left of the smallest λ > 0)" if 0 in lam
                     and len(pos) else "λ")
        shade = "0.3" if len(configs) > 1 else "C0"
        a.legend(handles=[Line2D([], [], color=shade, marker=style[0], linestyle=style[1:],
                                 label=name) for b, _, _, style, name in curves if b is a],
                 fontsize=8)
    named = {label: color for label, color in configs.items() if label}
    if named:
        fig.legend(handles=[Line2D([], [], color=c, lw=2.5, label=label)
                            for label, c in named.items()],
                   loc="lower center", ncol=min(3, len(named)), fontsize=8, frameon=False)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    bx.set_ylabel("Lipschitz bracket")
    fig.suptitle("Accuracy, robustness and Lipschitz constant as λ varies")
    rows = -(-len(named) // 3) if named else 0
    fig.set_figheight(4 + 0.25 * rows)
    fig.tight_layout(rect=(0, 0.25 * rows / fig.get_figheight() + (0.02 if rows else 0), 1, 1))
    return fig

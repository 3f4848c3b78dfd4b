"""Build ``paper/``: figures (PNG + PDF), Markdown tables and the reproduction report.

Everything here is computed from the sweeps' combined Datasets (``RUNS/<spec>/combined.nc``),
so the figures, tables and numbers of ``paper/README.md`` are regenerated, never typed.
:func:`build` is what ``clipkit reproduce`` (``make reproduce``) calls after the sweeps.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from clipkit.experiments import results
from clipkit.paper import plots

__all__ = ["SPECS", "AUTHORS_MNIST", "build", "table_rows"]

#: the sweeps of the paper, in the order ``reproduce`` runs them
SPECS = ("theory", "regression", "tradeoff", "table", "table_goal97")

#: the authors' published MNIST table (DESIGN §2): FC 200-80, mean of 3 runs, %
AUTHORS_MNIST = {
    "none": (97.1, 34.5, 31.2),
    "CLIP (goal 0.95)": (96.4, 29.8, 71.4),
    "CLIP (goal 0.97)": (97.0, 34.6, 72.4),
}
ROW_NAMES = {"standard": "none", "weight_decay": "weight decay", "clip": "CLIP (goal 0.95)"}


def _load(runs: Path, name: str) -> xr.Dataset | None:
    """A sweep's combined result, or None when it is missing or has no finished point."""
    path = runs / name / results.COMBINED_NAME
    if not path.is_file():
        return None
    ds = results.load(path)
    if "status" in ds.variables and not bool((ds["status"] == "done").any()):
        return None
    return ds


def _first_seed(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(seed=0) if "seed" in ds.dims else ds


def _only(ds: xr.Dataset, keep: Sequence[str]) -> xr.Dataset:
    """``ds`` with every dim not in ``keep`` reduced to its first entry (seed: the mean)."""
    for dim in list(ds.dims):
        if dim in keep:
            continue
        ds = ds.mean(dim, keep_attrs=True) if dim == "seed" else ds.isel({dim: 0})
    return ds


def _mean_seed(da: xr.DataArray) -> xr.DataArray:
    return da.mean("seed") if "seed" in da.dims else da


def _pct(v: float) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


def _num(v: float, digits: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def _md(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _at(da: xr.DataArray, attack: str, eps: float) -> float:
    """Accuracy under ``attack`` at the ε of its grid nearest to ``eps``."""
    sub = da.sel(attack=attack).dropna("eps", how="all")
    if sub.sizes["eps"] == 0:
        return float("nan")
    return float(sub.sel(eps=eps, method="nearest"))


def _nearest_eps(da: xr.DataArray, attack: str, eps: float) -> float:
    sub = da.sel(attack=attack).dropna("eps", how="all")
    return float(sub.eps.sel(eps=eps, method="nearest"))


def table_rows(ds: xr.Dataset, row_name: str | None = None) -> list[dict]:
    """One dict per (dataset, last_activation, method) of a classification sweep.

    Values are means over seeds; λ is the one that run used (for the discrepancy
    principle: the base λ and the λ of the last epoch).
    """
    rows = []
    for name in ("dataset", "last_activation", "method"):
        if name not in ds.dims and name in ds.coords:
            ds = ds.expand_dims(name)
    for dataset in ds.dataset.values:
        for last in ds.last_activation.values:
            for method in ds.method.values:
                d = ds.sel({"dataset": dataset, "last_activation": last, "method": method})
                clean = _mean_seed(d.clean_acc)
                lams = [lv for lv in d.lam.values if not bool(np.isnan(clean.sel(lam=lv)))]
                for lv in lams:
                    e = d.sel(lam=lv)
                    ra = _mean_seed(e.robust_acc)
                    lam_end = _mean_seed(e.lam_epoch.isel(epoch=-1)) if "lam_epoch" in e else None
                    rows.append({
                        "dataset": str(dataset),
                        "setting": "published (sigmoid on logits)" if bool(last)
                        else "corrected model",
                        "last_activation": bool(last),
                        "method": str(method),
                        "row": row_name or ROW_NAMES.get(str(method), str(method)),
                        "lam": float(lv),
                        "lam_end": float(lam_end) if lam_end is not None else float("nan"),
                        "clean": float(_mean_seed(e.clean_acc)),
                        "noise": _at(ra, "noise", float(ra.eps.max())),
                        "noise_eps": _nearest_eps(ra, "noise", float(ra.eps.max())),
                        "pgd_l2": _at(ra, "pgd_l2", 2.0),
                        "pgd_l2_eps": _nearest_eps(ra, "pgd_l2", 2.0),
                        "lip_lower": float(_mean_seed(e.lip_lower)),
                        "lip_upper": float(_mean_seed(e.lip_upper)),
                        "seeds": int(d.sizes.get("seed", 1)),
                    })
    return rows


def _table_markdown(rows: list[dict], dataset: str) -> str:
    header = ["setting", "regularization", "λ (start → end)", "clean %", "noise %",
              "PGD-ℓ2 ε=2 %", "Lip bracket", "authors' clean / noise / PGD-ℓ2 %"]
    out = []
    for r in rows:
        if r["dataset"] != dataset:
            continue
        authors = AUTHORS_MNIST.get(r["row"]) if dataset == "mnist" and r["last_activation"] \
            else None
        lam = f"{_num(r['lam'])}" if not math.isfinite(r["lam_end"]) or r["lam_end"] == r["lam"] \
            else f"{_num(r['lam'])} → {_num(r['lam_end'])}"
        out.append([
            r["setting"], r["row"], lam, _pct(r["clean"]),
            f"{_pct(r['noise'])} (σ={r['noise_eps']:g})", _pct(r["pgd_l2"]),
            f"[{_num(r['lip_lower'])}, {_num(r['lip_upper'])}]",
            " / ".join(f"{v:.1f}" for v in authors) if authors else "",
        ])
    return _md(header, out)


def _save(fig, path: Path, made: list[Path]) -> None:
    import matplotlib.pyplot as plt

    made.extend(plots.save(fig, path))
    plt.close(fig)


def build(runs: str | Path, paper: str | Path, *, profile: str = "quick",
          commands: dict[str, str] | None = None, timings: dict[str, float] | None = None,
          total_seconds: float | None = None) -> Path:
    """Regenerate ``paper/figures``, ``paper/tables`` and ``paper/README.md`` from the sweeps.

    Args:
        runs: the folder holding one output folder per sweep (``theory``, ``table``, ...).
        paper: the ``paper/`` folder.
        profile: the profile the sweeps ran with (named in the report).
        commands: the command that ran each sweep (for the report).
        timings: seconds each sweep took.
        total_seconds: the whole reproduction's wall time.

    Returns the report's path.
    """
    runs, paper = Path(runs), Path(paper)
    figs, tabs = paper / "figures", paper / "tables"
    figs.mkdir(parents=True, exist_ok=True)
    tabs.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    data = {name: _load(runs, name) for name in SPECS}
    device = _provenance(runs, SPECS)
    sections: dict[str, str] = {}

    th = data["theory"]
    if th is not None:
        t = _first_seed(th)
        _save(plots.theory_fits(t), figs / "theory_fits", made)
        _save(plots.theory_lipschitz(t), figs / "theory_lipschitz", made)
        _save(plots.theory_distance(t), figs / "theory_distance", made)
        if "power" in t.dims and t.sizes["power"] > 1:
            _save(plots.theory_power(t), figs / "theory_power", made)
        spread = float(t.label_spread)
        rows = []
        for p in t.power.values:
            d = t.sel(power=p)
            for i in range(d.sizes["lam"]):
                rows.append([
                    f"{int(p)}", f"{float(d.lam_rel[i]):g}", _num(float(d.lam[i])),
                    _num(float(d.exact_lip[i])), _num(float(d.clip_lip[i])),
                    _num(float(d.rate_bound[i])),
                    f"{100 * float(d.exact_dist[i]) / spread:.1f}",
                    f"{100 * float(d.clip_dist[i]) / spread:.1f}",
                ])
        # distance = sup over x in [−1, 1] of |f(x) − ȳ| (no "|" in a Markdown table)
        table = _md(["p", "λ/λ*", "λ", "Lip exact", "Lip CLIP net", "rate bound",
                     "exact: distance to ȳ, % of spread", "CLIP: distance to ȳ, % of spread"], rows)
        wd_rows = [[_num(float(t.wd_lam[i])), f"{100 * float(t.wd_dist[i]) / spread:.1f}",
                    f"{100 * float(t.wd_dist_zero[i]) / spread:.1f}", _num(float(t.wd_lip[i]))]
                   for i in range(t.sizes["wd_lam"])]
        wd_table = _md(["λ (weight decay)", "distance to ȳ, % of spread",
                        "distance to 0, % of spread", "Lip"], wd_rows)
        (tabs / "theory.md").write_text(table)
        (tabs / "theory_weight_decay.md").write_text(wd_table)
        above = t.sel(power=1).where(t.lam_rel >= 2, drop=True) if 1 in t.power.values else None
        worst = (max(float(above.exact_dist.max()), float(above.clip_dist.max())) / spread
                 if above is not None and above.sizes["lam"] else float("nan"))
        sections["theory"] = (
            f"Data: n = {t.sizes['sample']} points, ȳ = {float(t.label_mean):.3f}, "
            f"Var(y) = E(ȳ) = {float(t.E_const):.3f}, label spread {spread:.3f}, "
            f"**λ* = {float(t.lam_star):.4f}**, L* = {float(t.L_star):.2f}.\n\n{table}\n"
            f"For λ ≥ 2λ* (p = 1) the largest distance to ȳ, exact or CLIP network, is "
            f"**{100 * worst:.2f} % of the label spread** (the tests require < 5 %).\n\n"
            f"Weight regularization (the same network, λ‖θ‖²):\n\n{wd_table}"
        )

    rg = data["regression"]
    if rg is not None:
        r = _first_seed(rg)
        _save(plots.regression_fits(r), figs / "regression_fits", made)
        rows = []
        for m in rg.method.values:
            d = rg.sel({"method": m})
            rows.append([str(m), _num(float(_mean_seed(d.lam))),
                         f"{float(_mean_seed(d.test_mse)):.4f}",
                         f"{float(_mean_seed(d.test_mse_target)):.4f}",
                         f"[{_num(float(_mean_seed(d.lip_lower)))}, "
                         f"{_num(float(_mean_seed(d.lip_upper)))}]",
                         _num(float(_mean_seed(d.lip_exact)))])
        table = _md(["method", "λ", "test MSE (noisy labels)", "MSE to the target",
                     "Lip bracket (on ℝ)", "exact Lip on [−1, 1]"], rows)
        (tabs / "regression.md").write_text(table)
        sections["regression"] = table

    tb = data["table"]
    rows_all: list[dict] = []
    if tb is not None:
        rows_all += table_rows(tb)
    g97 = data["table_goal97"]
    if g97 is not None:
        rows_all += table_rows(g97, row_name="CLIP (goal 0.97)")
    order = {"none": 0, "weight decay": 1, "CLIP (goal 0.95)": 2, "CLIP (goal 0.97)": 3}
    rows_all.sort(key=lambda r: (r["dataset"], not r["last_activation"], order.get(r["row"], 9)))
    for dataset in ("mnist", "fashion-mnist"):
        if any(r["dataset"] == dataset for r in rows_all):
            table = _table_markdown(rows_all, dataset)
            (tabs / f"table_{dataset}.md").write_text(table)
            sections[f"table_{dataset}"] = table
    if tb is not None:
        for dataset in tb.dataset.values:
            d = tb.sel(dataset=dataset)
            _save(plots.robustness(d), figs / f"robustness_{dataset}", made)
            _save(plots.history(d), figs / f"history_{dataset}", made)
    if rows_all:
        (tabs / "table_rows.json").write_text(json.dumps(rows_all, indent=1))

    to = data["tradeoff"]
    if to is not None:
        d = _only(to, ("lam", "attack", "eps", "epoch"))
        _save(plots.tradeoff(d, attack="pgd_l2"), figs / "tradeoff", made)
        rows = []
        for lv in d.lam.values:
            e = d.sel(lam=lv)
            ra = e.robust_acc
            rows.append([_num(float(lv)), _pct(float(e.clean_acc)),
                         _pct(_at(ra, "noise", float(ra.eps.max()))), _pct(_at(ra, "fgsm", 0.1)),
                         _pct(_at(ra, "pgd_l2", 2.0)), _pct(_at(ra, "pgd_linf", 0.1)),
                         f"[{_num(float(e.lip_lower))}, {_num(float(e.lip_upper))}]"])
        table = _md(["λ", "clean %", "noise % (largest σ)", "FGSM ε=0.1 %", "PGD-ℓ2 ε=2 %",
                     "PGD-ℓ∞ ε=0.1 %", "Lip bracket"], rows)
        (tabs / "tradeoff.md").write_text(table)
        sections["tradeoff"] = table
        sections["tradeoff_source"] = str(to.attrs.get("data_source", ""))

    sources = sorted(_data_sources(runs, ("table", "table_goal97", "tradeoff")))
    report = paper / "README.md"
    report.write_text(_report(sections, made, paper, profile, device, commands or {},
                              timings or {}, total_seconds, rows_all, sources, data))
    return report


def _provenance(runs: Path, names: Sequence[str]) -> dict:
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


def _device_sentence(prov: dict, profile: str) -> list[str]:
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


def _data_sources(runs: Path, names: Sequence[str]) -> set[str]:
    """The ``data_source`` sentences of the run files (combining drops differing attrs)."""
    found = set()
    for name in names:
        for path in sorted((runs / name / "points").glob("*.nc")):
            with xr.open_dataset(path, engine=results.ENGINE) as ds:
                text = ds.attrs.get("data_source")
            if text:
                found.add(str(text))
    return found


def _report(sections, made, paper, profile, device, commands, timings, total, rows, sources,
            data) -> str:
    from clipkit.core import __version__

    def fig(name: str, caption: str) -> str:
        png = paper / "figures" / f"{name}.png"
        if png not in made:
            return ""
        return f"![{caption}](figures/{name}.png)\n\n*{caption}* ([PDF](figures/{name}.pdf))\n\n"

    def cmd(name: str) -> str:
        c = commands.get(name, f"clipkit sweep paper/{name}.yaml --profile {profile}")
        s = timings.get(name)
        return f"`{c}`" + (f" ({s:.0f} s)" if s is not None else "")

    wall = f"{total / 60:.1f} min" if total is not None else "not recorded"
    lines = [
        "# Reproduction report: CLIP — Cheap Lipschitz Training of Neural Networks",
        "",
        "Bungert, Raab, Roith, Schwinn, Tenbrinck, SSVM 2021 (LNCS 12679), arXiv 2103.12531.",
        "",
        "**Generated by `make reproduce` (`python -m clipkit.reproduce`); every figure, table "
        "and number below comes from the sweeps' result files — nothing is typed by hand "
        "except the prose and the authors' published numbers.**",
        "",
        f"* profile: **{profile}**; clipkit {__version__}, Python "
        f"{platform.python_version()}; whole reproduction: {wall}.",
        *_device_sentence(device, profile),
    ]
    cfg = _config(data.get("table"))
    if profile == "quick" and cfg:
        lines.append(
            f"* **The quick profile is small**: {cfg.get('n_train')} training images, "
            f"{cfg.get('epochs')} epochs ({cfg.get('warmup')} warm-up), {cfg.get('clip_pairs')}"
            f" CLIP pairs instead of the authors' 500, {cfg.get('n_eval')} test images for "
            f"the attacks and brackets, {cfg.get('pgd_steps')} PGD steps, one seed (the paper:"
            " 60,000 images, 100 epochs, 3 seeds). Its classification numbers show the "
            "*direction* of the effects at best, not the paper's accuracies.")
    for s in sources:
        lines.append(f"* Data: {s}.")
    if any("TEST split" in s for s in sources):
        lines.append(
            "* **MNIST differs from the paper**: the MNIST training images are not available "
            "offline on this machine, so every MNIST number here comes from the 10,000 "
            "official *test* images, split 8,000 train / 2,000 test by a seeded permutation "
            "(`ck.data.train_test`). Fashion-MNIST uses its official splits.")
    lines += ["", "## 1. How λ drives the network to a constant (DESIGN §3)", "",
              f"Notebook `notebooks/lambda_to_constant.ipynb`; command: {cmd('theory')}.", ""]
    if "theory" in sections:
        lines += [
            fig("theory_fits", "Fits over x at several λ: exact minimisers, CLIP networks, "
                "weight-regularized networks; the label mean ȳ dashed red, 0 dotted."),
            fig("theory_lipschitz", "Lip(f_λ) against λ (log-log), with the rate bound "
                "E(ȳ)/λ, the sharper (E(ȳ) − E(f_λ))/λ, L* and λ*."),
            fig("theory_distance", "Left: sup|f_λ − ȳ| over [−1, 1] against λ/λ*; the exact "
                "solution collapses onto ȳ at λ*. Right: weight regularization approaches 0, "
                "not ȳ."),
            fig("theory_power", "Penalty λ·Lip (p = 1) against λ·Lip² (p = 2): only p = 1 "
                "reaches the constant at a finite λ."),
            sections["theory"], "",
            "What agrees with §3: the exact minimiser is ȳ exactly for λ ≥ λ* (p = 1) and not "
            "below; Lip(f_λ) stays under the rate bound; with p = 2 the distance only decays. "
            "What the networks show: CLIP-trained networks follow the exact path and reach ȳ "
            "for λ ≥ 2λ*; just below and at λ* they keep more slope than the exact solution "
            "(a trained network is only approximately optimal, and CLIP's finite pair set "
            "gives a lower estimate of Lip). Weight regularization tends to the zero network.",
            "",
        ]
    lines += ["## 2. Nonlinear regression", "",
              f"Notebook `notebooks/regression.ipynb`; command: {cmd('regression')}.", ""]
    if "regression" in sections:
        lines += [fig("regression_fits", "Standard training, weight regularization and CLIP "
                      "on the 1-D problem; test error and Lipschitz bracket in the legend."),
                  sections["regression"], "",
                  "The bracket bounds the global Lipschitz constant on ℝ (the search may leave "
                  "[−1, 1]); the exact value is on [−1, 1], so the lower bound can exceed it.",
                  ""]
    lines += ["## 3. The MNIST table and its Fashion-MNIST analogue", "",
              f"Notebook `notebooks/classification.ipynb`; commands: {cmd('table')} and "
              f"{cmd('table_goal97')}.", "",
              "Setting: MLP 784-200-80-10 with sigmoid, SGD lr 0.1 momentum 0.9, batch 128 "
              "(the authors'); CLIP = `ck.CLIP.authors()` (power 2, pairs (x, x + 0.1·U[0,1)) "
              "from the training data) with the discrepancy principle (start λ = 0.1, step "
              "0.01 per epoch); weight decay λ = 5·10⁻⁴. **published** = the sigmoid also "
              "after the last layer, as in the authors' code and numbers; **corrected** = no "
              "activation on the logits. Robust accuracy counts a test point only when the "
              "clean and the attacked image are both classified correctly.", "",
              "The authors' Gaussian-noise level is not stated in DESIGN §2; the noise column "
              "here is at the largest σ of our grid, so it is *not* comparable to theirs. The "
              "PGD-ℓ2 column is at ε = 2 as in the paper (our PGD: random start, "
              "the profile's number of steps).", ""]
    for ds_name, title in (("mnist", "MNIST"), ("fashion-mnist", "Fashion-MNIST")):
        key = f"table_{ds_name}"
        if key in sections:
            lines += [f"### {title}", "", sections[key], ""]
            lines += [fig(f"robustness_{ds_name}", f"{title}: accuracy under Gaussian noise, "
                          "FGSM, PGD-ℓ2 and PGD-ℓ∞ against ε, for every configuration."),
                      fig(f"history_{ds_name}", f"{title}: test accuracy per epoch.")]
    lines += _comparison(rows, profile)
    lines += ["## 4. The accuracy–robustness–Lipschitz trade-off", "",
              f"Command: {cmd('tradeoff')} (the λ grid is one vectorised `fit_path` run).", ""]
    if "tradeoff" in sections:
        lines += [fig("tradeoff", "Clean accuracy, PGD-ℓ2 accuracy at the largest ε and the "
                      "Lipschitz bracket against λ (CLIP, authors' preset, corrected model)."),
                  sections["tradeoff"], ""]
    lines += [
        "## Figures", "",
        *[f"* `{p.relative_to(paper)}`" for p in made if p.suffix == ".png"], "",
        "## How to regenerate", "",
        "```bash",
        "make reproduce                       # every sweep's quick profile, then this report",
        "clipkit reproduce --profile full     # paper scale, on a GPU machine",
        "clipkit sweep paper/table.yaml --profile quick --workers 2   # one sweep",
        "```", "",
        "Run folders (executed notebooks, one result file per point, `combined.nc`) go to "
        "`runs/` (git-ignored); `notebooks/explore.ipynb` opens any of them with widgets.", "",
    ]
    return "\n".join(line for line in lines if line is not None)


def _config(ds: xr.Dataset | None) -> dict:
    """The configuration of a sweep's first finished run (the ``config`` JSON)."""
    if ds is None or "config" not in ds:
        return {}
    for text in np.ravel(ds.config.values):
        if isinstance(text, str) and text.startswith("{"):
            return json.loads(text)
    return {}


def _comparison(rows: list[dict], profile: str) -> list[str]:
    """Sentences on where our numbers agree or disagree with the authors' table."""
    out = ["### Side by side with the authors (MNIST, published setting)", ""]
    mn = {r["row"]: r for r in rows if r["dataset"] == "mnist" and r["last_activation"]}
    if not mn:
        return out + ["No MNIST runs were found.", ""]
    table = []
    for row, (c, n, p) in AUTHORS_MNIST.items():
        r = mn.get(row)
        if r is None:
            continue
        table.append([row, f"{c:.1f}", _pct(r["clean"]), f"{n:.1f}", _pct(r["noise"]),
                      f"{p:.1f}", _pct(r["pgd_l2"])])
    out.append(_md(["regularization", "authors clean %", "ours clean %", "authors noise %",
                    "ours noise % (largest σ)", "authors PGD-ℓ2 ε=2 %", "ours PGD-ℓ2 ε=2 %"],
                   table))
    none, clip = mn.get("none"), mn.get("CLIP (goal 0.95)")
    if none and clip:
        gain = clip["pgd_l2"] - none["pgd_l2"]
        sign = "agrees" if gain > 0.05 else "does not reproduce"
        out.append(
            f"The authors' main finding — CLIP raises PGD-ℓ2 (ε = 2) accuracy from 31.2 % to "
            f"71–72 % at almost the same clean accuracy — **{sign}** here: "
            f"{_pct(none['pgd_l2'])} % → {_pct(clip['pgd_l2'])} % (clean "
            f"{_pct(none['clean'])} % → {_pct(clip['clean'])} %)."
            + (" The quick profile trains far shorter than the paper (see the top of this "
               "report), so the absolute numbers are not comparable." if profile == "quick"
               else ""))
        out.append("")
    g95, g97 = mn.get("CLIP (goal 0.95)"), mn.get("CLIP (goal 0.97)")
    if g95 and g97 and all(g95[k] == g97[k] for k in ("clean", "pgd_l2", "lam_end")):
        out += [
            "The two CLIP rows are identical: the training accuracy stayed below both goal "
            "accuracies, so the discrepancy principle only lowered λ, the same way in both "
            f"runs (λ {_num(g95['lam'])} → {_num(g95['lam_end'])}).", ""]
    for dataset, title in (("mnist", "MNIST"), ("fashion-mnist", "Fashion-MNIST")):
        cm = {r["row"]: r for r in rows if r["dataset"] == dataset and not r["last_activation"]}
        a, b = cm.get("none"), cm.get("CLIP (goal 0.95)")
        if a and b:
            word = "raises" if b["pgd_l2"] > a["pgd_l2"] + 0.05 else "does not raise"
            out += [
                f"Corrected model, {title}: CLIP {word} the PGD-ℓ2 (ε = 2) accuracy, "
                f"{_pct(a['pgd_l2'])} % → {_pct(b['pgd_l2'])} %, at clean accuracy "
                f"{_pct(a['clean'])} % → {_pct(b['clean'])} %; the Lipschitz upper bound "
                f"falls from {_num(a['lip_upper'])} to {_num(b['lip_upper'])}.", ""]
    return out

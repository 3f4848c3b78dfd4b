"""Build ``paper/``: figures (PNG + PDF), Markdown tables and the reproduction report.

The report is ``report_template.md`` (beside this module) with its ``${placeholders}``
filled from the sweeps' combined Datasets (``RUNS/<spec>/combined.nc``): the tables from
``tables``, the run facts from ``runinfo``, every verdict computed with a stated tolerance.
:func:`build` is what ``clipkit reproduce`` (``make reproduce``) calls after the sweeps.
"""

from __future__ import annotations

import json
import platform
import string
from collections.abc import Callable
from pathlib import Path

import xarray as xr

from clipkit.core import __version__
from clipkit.paper import plots, rows, runinfo, tables, verdicts

__all__ = ["SPECS", "TEMPLATE", "build"]

#: the sweeps of the paper, in the order ``reproduce`` runs them
SPECS = ("theory", "regression", "tradeoff", "table", "table_goal97")
TEMPLATE = Path(__file__).with_name("report_template.md")
NOT_RUN = "*This sweep has no finished run in this reproduction.*\n"


class _Figures:
    """Draws figures into ``paper/figures`` and gives their Markdown."""

    def __init__(self, paper: Path) -> None:
        self.paper, self.made = paper, []

    def draw(self, name: str, make: Callable[[], object], caption: str) -> str:
        import matplotlib.pyplot as plt

        fig = make()
        self.made.extend(plots.save(fig, self.paper / "figures" / name))
        plt.close(fig)
        return (f"![{caption}](figures/{name}.png)\n\n*{caption}* "
                f"([PDF](figures/{name}.pdf))\n\n")


def _yes(flag: bool | float | None, yes: str, no: str) -> str:
    return yes if flag else no


def _theory(t: xr.Dataset, figs: _Figures, tabs: Path) -> str:
    t = tables.first_seed(t)
    table, wd_table = tables.theory_tables(t)
    (tabs / "theory.md").write_text(table)
    (tabs / "theory_weight_decay.md").write_text(wd_table)
    found = tables.theory_findings(t)
    text = figs.draw("theory_fits", lambda: plots.theory_fits(t),
                     "Fits over x at several λ: exact minimisers, CLIP networks, "
                     "weight-regularized networks; the label mean ȳ dashed red, 0 dotted.")
    text += figs.draw("theory_lipschitz", lambda: plots.theory_lipschitz(t),
                      "Lip(f_λ) against λ (log-log), with the rate bound E(ȳ)/λ, the sharper "
                      "(E(ȳ) − E(f_λ))/λ, L* and λ*.")
    text += figs.draw("theory_distance", lambda: plots.theory_distance(t),
                      "Left: sup|f_λ − ȳ| over [−1, 1] against λ/λ*. Right: weight "
                      "regularization against its λ: distance to ȳ and to 0.")
    if "power" in t.dims and t.sizes["power"] > 1:
        text += figs.draw("theory_power", lambda: plots.theory_power(t),
                          "Penalty λ·Lip (p = 1) against λ·Lip² (p = 2).")
    spread = float(t.label_spread)
    text += (f"Data: n = {t.sizes['sample']} points, ȳ = {float(t.label_mean):.3f}, "
             f"Var(y) = E(ȳ) = {float(t.E_const):.3f}, label spread {spread:.3f}, "
             f"**λ* = {float(t.lam_star):.4f}**, L* = {float(t.L_star):.2f}.\n\n{table}\n")
    claims = []
    if "exact_constant_above" in found:
        claims.append(
            "the exact minimiser (p = 1) "
            + _yes(found["exact_constant_above"], "**is** ȳ for every λ ≥ λ*",
                   "is **not** ȳ for some λ ≥ λ*")
            + _yes(found["exact_moves_below"], " and differs from it for every λ < λ*",
                   ", but is ȳ also for some λ < λ*"))
    claims.append("Lip of the exact minimiser "
                  + _yes(found["rate_holds"], "stays under", "**exceeds**") + " the rate bound")
    if "p2_never_constant" in found:
        claims.append("with p = 2 the exact minimiser "
                      + _yes(found["p2_never_constant"], "is never ȳ (no threshold)",
                             "**is** ȳ at some λ"))
    if "clip_constant_above" in found:
        claims.append(
            "the CLIP-trained networks "
            + _yes(found["clip_constant_above"], "reach ȳ", "do **not** reach ȳ")
            + f" for λ ≥ 2λ* (largest distance, exact or network: "
            f"{100 * found['worst_above']:.2f} % of the spread)")
    claims.append("weight regularization at its largest λ "
                  + _yes(found["wd_to_zero"], "tends to the zero network, not to ȳ",
                         "does **not** tend to the zero network"))
    text += (f"Computed from these numbers (tolerances: {tables.EXACT_TOL:g} of the label "
             f"spread for the exact solution, {tables.NETWORK_TOL:g} for trained networks): "
             + "; ".join(claims) + ".\n\n"
             f"Weight regularization (the same network, λ‖θ‖²):\n\n{wd_table}")
    return text


def _regression(rg: xr.Dataset, figs: _Figures, tabs: Path) -> str:
    table = tables.regression_table(rg)
    (tabs / "regression.md").write_text(table)
    return (figs.draw("regression_fits", lambda: plots.regression_fits(tables.first_seed(rg)),
                      "Standard training, weight regularization and CLIP on the 1-D problem; "
                      "test error and Lipschitz bracket in the legend.")
            + table + "\nThe bracket bounds the global Lipschitz constant on ℝ (the search may "
            "leave [−1, 1]); the exact value is on [−1, 1], so the lower bound can exceed it.\n")


def _classification(tb: xr.Dataset | None, g97: xr.Dataset | None, figs: _Figures,
                    tabs: Path) -> tuple[str, list[dict]]:
    found: list[dict] = []
    if tb is not None:
        found += rows.table_rows(tb)
    if g97 is not None:
        found += rows.table_rows(g97, row_name="CLIP (goal 0.97)")
    order = {"none": 0, "weight decay": 1, "CLIP (goal 0.95)": 2, "CLIP (goal 0.97)": 3}
    found.sort(key=lambda r: (r["dataset"], not r["last_activation"], order.get(r["row"], 9)))
    text = ""
    for dataset, title in verdicts.TITLES.items():
        if not any(r["dataset"] == dataset for r in found):
            continue
        table = tables.classification_table(found, dataset)
        (tabs / f"table_{dataset}.md").write_text(table)
        text += f"### {title}\n\n{table}\n"
        if tb is None or dataset not in tb.dataset.values:
            continue
        d = tb.sel(dataset=dataset)
        text += figs.draw(f"robustness_{dataset}", lambda d=d: plots.robustness(d),
                          f"{title}: accuracy under each attack against ε (the noise grid "
                          "included), for every configuration (seed means).")
        if "test_acc" in d and "method" in d.dims and "clip" in d.method.values:
            text += figs.draw(
                f"curves_{dataset}", lambda d=d: plots.learning_curves(d),
                f"{title}: learning curves of CLIP and no regularization, both settings: "
                "clean test accuracy and accuracy under both PGD-ℓ2 attacks (ε = 2) per "
                "epoch; seed mean and range; dotted: the first epoch with λ > 0; circles: "
                "the tested epochs.")
            curves = tables.curve_table(d)
            (tabs / f"curves_{dataset}.md").write_text(curves)
            text += f"The learning curves' numbers (seed means, %):\n\n{curves}\n"
    for sweep in (tb, g97):
        for check in ((verdicts.diverged_runs(sweep), verdicts.certified_order(sweep))
                      if sweep is not None else ()):
            text += f"{check}\n" if check else ""
    if found:
        (tabs / "table_rows.json").write_text(
            json.dumps([rows.row_json(r) for r in found], indent=1))
    return text or NOT_RUN, found


def _tradeoff(to: xr.Dataset, figs: _Figures, tabs: Path) -> str:
    d = tables.reduce_to(to, ("lam", "attack", "eps", "epoch"))
    table = tables.tradeoff_table(d)
    (tabs / "tradeoff.md").write_text(table)
    check = verdicts.diverged_runs(to) + verdicts.certified_order(to)
    return figs.draw("tradeoff", lambda: plots.tradeoff(d, attack="pgd_l2"),
                     "Clean accuracy and PGD-ℓ2 accuracy at the largest ε, certified ℓ2 "
                     "accuracy at ε = 0.1, and the Lipschitz bracket against λ (CLIP, "
                     "authors' preset, corrected model).") + table + (f"\n{check}" if check else "")


def _run_lines(runs: Path, profile: str, data: dict[str, xr.Dataset | None]) -> str:
    lines = runinfo.device_lines(runinfo.compute_time(runs, SPECS), profile)
    lines.append(f"* What the **{profile}** profile ran (from the result files' "
                 "configurations; the paper: 54,000 training images, 100 epochs, 3 seeds):")
    lines += ["  " + line for line in runinfo.profile_lines(runs, SPECS)]
    sources = runinfo.data_sources(runs, ("table", "table_goal97", "tradeoff"))
    lines += [f"* Data ({', '.join(sources[s])} sweep{'s' * (len(sources[s]) > 1)}): {s}."
              for s in sorted(sources)]
    if any("TEST split" in s for s in sources):
        lines.append(
            "* **MNIST differs from the paper**: the MNIST training images were not available, "
            "so every MNIST number here comes from the official *test* images, split into a "
            "training and a test part by a seeded permutation (`ck.data.train_test`; the "
            "sizes are in the data line above).")
    return "\n".join(lines) + "\n"


def build(runs: str | Path, paper: str | Path, *, profile: str = "quick",
          commands: dict[str, str] | None = None, timings: dict[str, float] | None = None,
          total_seconds: float | None = None, earlier: dict[str, int] | None = None) -> Path:
    """Regenerate ``paper/figures``, ``paper/tables``, ``paper/results`` (each sweep's
    combined result without trained weights, for the explorer) and ``paper/README.md``.

    Args:
        runs: the folder holding one output folder per sweep (``theory``, ``table``, ...).
        paper: the ``paper/`` folder.
        profile: the profile the sweeps ran with (named in the report).
        commands: the command that ran each sweep (for the report).
        timings: seconds each sweep took.
        total_seconds: the whole reproduction's wall time.
        earlier: per sweep, the points an earlier invocation had finished (skipped now):
            then the times above are this invocation's only, and the report says so.

    Returns the report's path.
    """
    runs, paper = Path(runs), Path(paper)
    tabs = paper / "tables"
    (paper / "figures").mkdir(parents=True, exist_ok=True)
    tabs.mkdir(parents=True, exist_ok=True)
    figs = _Figures(paper)
    data = {name: runinfo.load_sweep(runs, name) for name in SPECS}
    commands, timings, earlier = commands or {}, timings or {}, earlier or {}

    def cmd(name: str) -> str:
        c = commands.get(name, f"clipkit sweep paper/{name}.yaml --profile {profile}")
        s, k = timings.get(name), earlier.get(name, 0)
        resumed = f"; {k} points finished by an earlier invocation" if k else ""
        return f"`{c}`" + (f" ({s:.0f} s{resumed})" if s is not None else "")

    wall = "not recorded"
    if total_seconds is not None:
        wall = f"{total_seconds / 60:.1f} min"
        if sum(earlier.values()):
            wall += (f" for this invocation; {sum(earlier.values())} points had been "
                     "finished by an earlier one (the device line's computing time counts "
                     "every run)")

    classification, found = _classification(data["table"], data["table_goal97"], figs, tabs)
    fill = {
        "profile": profile, "version": __version__, "python": platform.python_version(),
        "wall": wall,
        "run_lines": _run_lines(runs, profile, data),
        "theory": _theory(data["theory"], figs, tabs) if data["theory"] is not None else NOT_RUN,
        "regression": (_regression(data["regression"], figs, tabs)
                       if data["regression"] is not None else NOT_RUN),
        "tables": classification,
        "comparison": verdicts.comparison(found),
        "tradeoff": (_tradeoff(data["tradeoff"], figs, tabs)
                     if data["tradeoff"] is not None else NOT_RUN),
        **{f"cmd_{name}": cmd(name) for name in SPECS},
    }
    fill["figure_list"] = "\n".join(f"* `{p.relative_to(paper)}`" for p in figs.made
                                    if p.suffix == ".png")
    runinfo.save_for_explorer(data, paper / "results")
    report = paper / "README.md"
    report.write_text(string.Template(TEMPLATE.read_text()).substitute(fill))
    return report

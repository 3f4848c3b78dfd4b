"""The sweep explorer: what it offers for each kind of sweep, and that it draws the chosen data.

The sweeps here are made of hand-written run Datasets with the notebooks' variables
(``fake_sweeps.py``), combined as ``clipkit sweep`` combines them; each figure is checked
against the numbers behind it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import xarray as xr

from clipkit.experiments import results
from clipkit.paper import explore

sys.path.insert(0, str(Path(__file__).parent))
from fake_sweeps import classification_run, regression_run, theory_run  # noqa: E402

matplotlib.use("Agg")
@pytest.fixture(scope="module")
def grid() -> xr.Dataset:
    """Two methods × two settings, three λ each: the sweep of a trade-off over methods."""
    return results.combine([classification_run(m, last, [0.0, 0.1, 1.0])
                            for m in ("clip", "weight_decay") for last in (False, True)])


def labels(fig) -> list[str]:
    """The legend entries of a figure: its panels' legends, then its own (robustness')."""
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    return [text.get_text() for legend in legends for text in legend.get_texts()]


def test_a_missing_sweep_names_the_command_that_makes_one(tmp_path):
    for folder in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(FileNotFoundError) as err:
            explore.open_sweep(folder)
        assert explore.MAKE_A_SWEEP in str(err.value) and str(folder) in str(err.value)
        assert "paper/results/" in str(err.value)  # the paper's own, ready to open


def test_a_sweep_opens_from_its_combined_file_or_its_runs(tmp_path, grid):
    results.save(classification_run("clip", False, [0.1]), tmp_path / "points" / "a.nc")
    assert explore.describe(explore.open_sweep(tmp_path)).startswith("classification sweep")
    results.save(grid, tmp_path / results.COMBINED_NAME)
    opened = explore.open_sweep(tmp_path)
    assert explore.describe(opened) == ("classification sweep: 2 methods (CLIP, weight decay), "
                                        "2 settings (corrected, published (sigmoid on logits)); "
                                        "runs: 4 done")


def test_describe_counts_the_seeds_and_names_them_where_few():
    def sweep(seeds):
        runs = []
        for s in seeds:
            run = classification_run("clip", False, [0.1], seed=s)
            run.attrs[results.SWEPT_ATTR] = ["method", "last_activation", "seed"]
            runs.append(run)
        return results.combine(runs)

    one = explore.describe(sweep([0]))
    assert one == ("classification sweep: 1 method (CLIP), 1 setting (corrected), 1 seed (0); "
                   "runs: 1 done")  # was "method 1, last_activation 1": read as method #1
    assert "3 seeds (0, 1, 2);" in explore.describe(sweep([0, 1, 2]))
    assert "8 seeds;" in explore.describe(sweep(range(8)))  # many: the count only


def test_the_setting_dropdown_is_named_as_the_docs_name_it(grid):
    boxes = explore.Explorer(grid).widgets
    assert boxes["last_activation"].description == "setting" and boxes["lam"].description == "λ"


def test_classification_controls(grid):
    c = explore.controls(grid)
    assert list(c) == ["method", "last_activation", "dataset", "lam", "attack"]
    assert c["method"] == [("all", "all"), ("CLIP", "clip"), ("weight decay", "weight_decay")]
    assert c["last_activation"] == [("all", "all"), ("corrected", False),
                                    ("published (sigmoid on logits)", True)]
    assert c["dataset"] == [("fashion-mnist", "fashion-mnist")]
    assert c["lam"] == [("all", "all"), ("λ = 0", 0.0), ("λ = 0.1", 0.1), ("λ = 1", 1.0)]
    assert [v for _, v in c["attack"]] == ["noise", "pgd_l2"]


def test_the_figures_draw_the_chosen_lines_with_their_names(grid):
    robustness, history, tradeoff = explore.figures(
        grid, {"method": "clip", "lam": 0.1, "attack": "pgd_l2"})
    assert labels(robustness) == ["CLIP, λ = 0.1, corrected",
                                  "CLIP, λ = 0.1, published (sigmoid on logits)"]
    assert labels(history) == labels(robustness)
    line = robustness.axes[0].get_lines()[1]
    want = grid.robust_acc.sel({"method": "clip", "last_activation": True, "lam": 0.1,
                                "attack": "pgd_l2"})
    np.testing.assert_allclose(line.get_xdata(), [0.0, 1.0, 2.0])  # pgd_l2's grid, no NaN
    np.testing.assert_allclose(line.get_ydata(), want.dropna("eps").values)
    # the trade-off is over every λ of the other choices, at pgd_l2's largest ε
    assert {"clean", "PGD-ℓ2 ε = 2", "CLIP, corrected"} <= set(labels(tradeoff))
    # certified at the positive ε of its grid nearest 0.1 (pgd_l2 here has 1 and 2)
    assert "certified ℓ2, ε = 1" in labels(tradeoff)
    noise = labels(explore.figures(grid, {"attack": "noise"})[2])
    assert {"weight decay, published (sigmoid on logits)", "Gaussian noise σ = 1"} <= set(noise)
    everything = explore.figures(grid)[0]  # the defaults: all methods, settings and λ
    assert len(labels(everything)) == 2 * 2 * 3


def test_a_one_method_sweep_still_names_method_and_setting():
    sweep = results.combine([classification_run("clip", False, [0.0, 0.1, 1.0], swept=False)])
    assert "method" not in sweep.dims  # a scalar coordinate: the sweep did not vary it
    fig = explore.figures(sweep, {"lam": 1.0})[0]
    assert labels(fig) == ["CLIP, λ = 1, corrected"]
    one_lam = results.combine([classification_run("clip", False, [0.1], swept=False)])
    assert "no trade-off" in explore.figures(one_lam)[2].axes[0].texts[0].get_text()


def test_the_explorer_redraws_on_a_change_and_shows_errors_in_place(grid, monkeypatch):
    pytest.importorskip("ipywidgets")
    with pytest.raises(ValueError, match="attack = 'fgsm' is not in this sweep; it has: "
                                         "'noise', 'pgd_l2'"):
        explore.Explorer(grid, attack="fgsm")
    ex = explore.Explorer(grid, attack="pgd_l2")
    assert ex.choice == {"method": "all", "last_activation": "all",
                         "dataset": "fashion-mnist", "lam": "all", "attack": "pgd_l2"}
    ex.show()  # no IPython here: nothing displayed, the figures are still drawn
    ex.widgets["method"].value = "weight_decay"
    assert ex.redraws == 1
    drawn = []
    monkeypatch.setattr(explore, "figures", lambda ds, choice: drawn.append(choice) or 1 / 0)
    monkeypatch.setattr(explore, "_note", lambda text: drawn.append(text))
    ex.widgets["lam"].value = 1.0
    assert ex.redraws == 2 and drawn[0]["lam"] == 1.0
    assert drawn[1].startswith("cannot draw") and "ZeroDivisionError" in drawn[1]
    for widget in ex.widgets.values():  # closed here, not by __del__ at interpreter exit
        widget.close()


def test_the_summary_has_one_number_per_run_and_lam(grid):
    s = explore.summary(grid)
    assert not {"epoch", "eps"} & set(s.dims)
    assert set(s.data_vars) >= {"clean_acc", "lip_lower", "lip_upper", "robust_acc_max_eps",
                                "eps_max", "status"}
    assert list(s.eps_max.values) == [1.0, 2.0]  # each attack's own largest ε
    xr.testing.assert_equal(s.robust_acc_max_eps.sel(attack="noise", drop=True),
                            grid.robust_acc.sel(attack="noise", eps=1.0, drop=True)
                            .transpose(*s.robust_acc_max_eps.sel(attack="noise").dims))


# --------------------------------------------------------------------------- other sweeps


def test_a_theory_sweep_shows_one_run_and_power():
    sweep = results.combine([theory_run(0), theory_run(1)])
    assert explore.kind(sweep) == "theory"
    assert explore.controls(sweep) == {"power": [("p = 1", 1), ("p = 2", 2)],
                                       "seed": [("seed = 0", 0), ("seed = 1", 1)]}
    fits, lipschitz, distance = explore.figures(sweep, {"power": 2, "seed": 1})
    first = fits.axes[0].get_lines()[0]  # the exact minimiser at the smallest λ
    np.testing.assert_allclose(first.get_ydata(),
                               sweep.exact_f.sel(seed=1, power=2).isel(lam_rel=0))
    assert "p = 2" in lipschitz.axes[0].get_title() and "p = 2" in distance.axes[0].get_title()
    summary = explore.summary(sweep)
    assert set(summary.dims) == {"seed", "power", "lam_rel", "wd_lam"}
    # one table per set of dims: no value repeated along a dimension it does not have
    tables = explore.summary_tables(summary)
    assert sum(len(t.columns) for t in tables) == len(summary.data_vars)
    exact = next(t for t in tables if "exact_lip" in t.columns)
    assert "wd_lam" not in exact.index.names
    assert len(exact) == summary.exact_lip.size


def test_a_regression_sweep_shows_each_method_of_one_run():
    sweep = results.combine([regression_run(0), regression_run(1)])
    assert explore.kind(sweep) == "regression"
    (fig,) = explore.figures(sweep, {"seed": 1})
    drawn = {line.get_label().split(":")[0]: line.get_ydata() for line in fig.axes[0].get_lines()
             if ":" in line.get_label()}
    np.testing.assert_allclose(drawn["clip"], sweep.f.sel({"seed": 1, "method": "clip"}))
    # the exact constant is on the grid's interval, the bracket global: the summary says so
    table = explore.summary(results.load(PAPER_RESULTS / "regression" / results.COMBINED_NAME))
    assert "lip_exact_on_[-1, 1]" in table and "lip_exact" not in table


def test_something_else_is_refused_with_what_it_accepts():
    with pytest.raises(ValueError, match="not a sweep of classification, lambda_to_constant or "
                                         "regression.ipynb.*robust_acc, exact_f"):
        explore.kind(xr.Dataset({"loss": ("epoch", [1.0])}))


def test_a_choice_with_nothing_to_draw_says_why():
    """A failed run, or a λ that one method was never run at, is a note with the run's
    status and error, not empty axes."""
    failed = results.record_failure  # a failed point as a sweep records it
    good = regression_run(0)
    path = failed(Path(__import__("tempfile").mkdtemp()) / "r.nc", {"seed": 1},
                  "NonFiniteLossError: non-finite objective nan in epoch 3")
    sweep = results.combine([good, results.load(path)])
    (note,) = explore.figures(sweep, {"seed": 1})
    text = note.axes[0].texts[0].get_text()
    assert "nothing to draw for this choice (runs failed: NonFiniteLossError" in text
    (fig,) = explore.figures(sweep, {"seed": 0})
    assert not fig.axes[0].texts  # the good run is drawn
    # classification: λ = 0.5 exists for one method only
    sweep = results.combine([classification_run("clip", False, [0.1, 0.5]),
                             classification_run("weight_decay", False, [0.1])])
    (note,) = explore.figures(sweep, {"method": "weight_decay", "lam": 0.5})
    assert "nothing to draw for this choice (runs " in note.axes[0].texts[0].get_text()
    assert len(explore.figures(sweep, {"method": "clip", "lam": 0.5})) == 3


def test_the_lam_list_offers_what_the_chosen_method_was_run_at():
    """A sweep's λ are the union over its methods; the λ list follows the chosen method."""
    pytest.importorskip("ipywidgets")
    sweep = results.combine([classification_run("clip", False, [0.0, 0.1, 0.5]),
                             classification_run("weight_decay", False, [0.0, 1e-3])])
    every = [0.0, 1e-3, 0.1, 0.5]
    assert [v for _, v in explore.lam_options(sweep)] == ["all", *every]
    assert [v for _, v in explore.lam_options(sweep, {"method": "weight_decay"})] == [
        "all", 0.0, 1e-3]
    ex = explore.Explorer(sweep)
    ex.show()
    lam = ex.widgets["lam"]
    assert [v for _, v in lam.options] == ["all", *every]
    lam.value = 0.5
    ex.widgets["method"].value = "weight_decay"  # 0.5 was not run: back to all
    assert [v for _, v in lam.options] == ["all", 0.0, 1e-3] and lam.value == "all"
    lam.value = 0.0
    ex.widgets["method"].value = "clip"  # 0 was: kept
    assert [v for _, v in lam.options] == ["all", 0.0, 0.1, 0.5] and lam.value == 0.0
    assert ex.redraws == 4  # one per change made above, none from replacing the list
    for widget in ex.widgets.values():
        widget.close()


PAPER_RESULTS = Path(__file__).resolve().parents[2] / "paper" / "results"


@pytest.mark.parametrize("sweep", ["tradeoff", "theory", "regression", "table",
                                   "table_goal97"])
def test_the_papers_own_results_open_in_the_explorer(sweep):
    """paper/results is what explore.ipynb opens as committed (its default sweep_dir is the
    trade-off): every sweep of paper/ is there, without trained weights, and draws."""
    ds = explore.open_sweep(PAPER_RESULTS / sweep)
    assert not any(str(v).startswith(("param_", "buffer_")) for v in ds.data_vars)
    assert (ds.status == "done").all()
    figs = explore.figures(ds)
    assert figs and all(f.axes for f in figs)
    for f in figs:
        matplotlib.pyplot.close(f)
    assert explore.summary(ds).data_vars


def test_the_explorer_notebook_defaults_to_the_papers_tradeoff():
    import json
    notebook = json.loads((PAPER_RESULTS.parents[1] / "notebooks" / "explore.ipynb").read_text())
    cell = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert 'sweep_dir: str = "../paper/results/tradeoff"' in "".join(cell["source"])
    assert (PAPER_RESULTS / "tradeoff" / results.COMBINED_NAME).is_file()


def test_the_history_circles_the_tested_epochs_and_says_it_averages_the_seeds():
    """On the paper's table the history of no regularization (corrected, Fashion-MNIST)
    climbs to 0.83 while the λ panel shows 0.60: the kept epochs were 1, 3 and 3."""
    ds = explore.open_sweep(PAPER_RESULTS / "table")
    choice = {"method": "standard", "last_activation": False, "dataset": "fashion-mnist"}
    history = explore.figures(ds, choice)[1]
    ax = history.axes[0]
    assert ax.get_ylabel() == "clean test accuracy (mean of 3 seeds)"
    circles = [ln for ln in ax.get_lines() if ln.get_label() == "_kept"]
    sel = ds.selected.sel(choice)  # a dict: sel(method=...) is xarray's own argument
    want = sorted(int(e) for e in sel.epoch.values[(sel > 0).any(["seed", "lam"]).values])
    assert [int(e) for e in circles[0].get_xdata()] == want
    assert "tested epoch (a seed's kept weights)" in labels(history)
    matplotlib.pyplot.close("all")

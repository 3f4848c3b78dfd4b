"""clipkit.paper.plots on combined sweeps: what each figure draws, and the inputs it refuses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from clipkit.experiments import results
from clipkit.paper import plots

sys.path.insert(0, str(Path(__file__).parent))
from fake_sweeps import classification_run, regression_run, theory_run  # noqa: E402

matplotlib.use("Agg")


def test_regression_fits_of_a_seed_sweep_draw_the_first_seed():
    sweep = results.combine([regression_run(0), regression_run(1)])
    fig = plots.regression_fits(sweep)
    assert "(seed 0 of 2)" in fig.axes[0].get_title()
    drawn = {line.get_label().split(":")[0]: line.get_ydata() for line in fig.axes[0].get_lines()
             if ":" in line.get_label()}
    np.testing.assert_allclose(drawn["clip"], sweep.f.sel({"seed": 0, "method": "clip"}))
    one = plots.regression_fits(sweep.isel(seed=1).sel({"method": "clip"}))  # a scalar method
    assert any(line.get_label().startswith("clip:") for line in one.axes[0].get_lines())


def test_regression_fits_name_a_diverged_method_instead_of_drawing_nan():
    run = regression_run(0)
    clip = {"method": "clip"}
    for var in ("f", "test_mse", "lip_lower", "lip_upper"):
        run[var].loc[clip] = np.nan
    run["diverged"] = ("method", [0, 3])
    labels = [line.get_label() for line in plots.regression_fits(run).axes[0].get_lines()]
    assert "clip: diverged in epoch 3" in labels
    assert any(label.startswith("standard: test MSE 0.200") for label in labels)


def test_tradeoff_draws_an_eps_of_the_attack_and_labels_the_one_drawn():
    ds = results.combine([classification_run("clip", False, [0.0, 0.1, 1.0])])
    grid = ds.robust_acc.sel(attack="pgd_l2").dropna("eps", how="all").eps.values
    between = float(grid[-2] + 0.4 * (grid[-1] - grid[-2]))  # nearer the second largest
    fig = plots.tradeoff(ds, attack="pgd_l2", eps=between)
    label = [t.get_text() for t in fig.axes[0].get_legend().get_texts() if "PGD" in t.get_text()]
    assert label and f"= {grid[-2]:g}" in label[0]
    line = next(ln for ln in fig.axes[0].get_lines() if "PGD" in ln.get_label())
    np.testing.assert_allclose(line.get_ydata(),
                               ds.robust_acc.sel(attack="pgd_l2", eps=grid[-2]).squeeze())
    # clean accuracy and the attacks count different test images: the legend says so
    ds.clean_acc.attrs["description"] = "accuracy on the 1000 test images"
    ds.robust_acc.attrs["description"] = "accuracy under attack on 200 test images (...)"
    labels = [t.get_text() for t in plots.tradeoff(ds).axes[0].get_legend().get_texts()]
    assert "clean (1000 test images)" in labels
    assert any("PGD" in t and "(200 test images)" in t for t in labels)
    assert plots.robustness(ds).axes[0].get_ylabel() == "accuracy (200 test images)"
    with pytest.raises(ValueError, match="tradeoff: attack 'pgd' is not in this result; it has: "
                                         "'noise'"):
        plots.tradeoff(ds, attack="pgd")
    with pytest.raises(ValueError, match="robustness: attack 'cw' is not in this result"):
        plots.robustness(ds, attacks=["cw"])


def test_learning_curves_count_the_seeds_that_have_data():
    runs = []
    for m in ("standard", "clip"):
        for s in (0, 1):
            run = classification_run(m, False, [0.1], seed=s)
            run["lam_epoch"] = run.test_acc * 0 + 0.1
            run.attrs[results.SWEPT_ATTR] = ["method", "last_activation", "seed"]
            runs.append(run)
    runs[3] = runs[3].map(lambda v: v * np.nan, keep_attrs=True)  # CLIP's seed 1: no values
    fig = plots.learning_curves(results.combine(runs))
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "none (2 seeds)" in legend and "CLIP (1 seeds)" in legend

    with pytest.raises(ValueError, match="learning_curves needs a classification result with a "
                                         "history .*; this one has f, "):
        plots.learning_curves(regression_run(0))


def test_robustness_legend_sits_under_the_panels_and_names_the_methods_as_the_tables_do():
    ds = results.combine([classification_run("standard", False, [0.0]),
                          classification_run("clip", False, [0.1])])
    fig = plots.robustness(ds, attacks=["noise", "pgd_l2"])
    assert all(ax.get_legend() is None for ax in fig.axes)  # none over a panel's lines
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("no regularization") for t in labels)
    assert any(t.startswith("CLIP") for t in labels)
    assert [ax.get_xlabel() for ax in fig.axes] == ["σ (noise level)", "ε (radius)"]
    legend_top = fig.legends[0].get_window_extent().transformed(fig.transFigure.inverted()).y1
    assert legend_top <= min(ax.get_position().y0 for ax in fig.axes)


def test_theory_fits_draw_every_weight_decay_lambda():
    run = theory_run(0)
    run = run.reindex(wd_lam=[1e-3, 1e-2, 1e-1, 1.0, 10.0]).fillna(0.5)  # a 5-value grid
    fig = plots.theory_fits(run)
    drawn = [ln.get_label() for ln in fig.axes[2].get_lines() if ln.get_label().startswith("λ")]
    assert drawn == [f"λ = {v:g}" for v in run.wd_lam.values]


#: how wide a notebook shows a figure, in inches at the figure's dpi: a wider one is shrunk
NOTEBOOK_WIDTH = 10.0


def shown_size(fig, text) -> float:
    """The font size of ``text`` as a notebook shows ``fig``: shrunk with a figure too wide."""
    return text.get_fontsize() * min(1.0, NOTEBOOK_WIDTH / fig.get_figwidth())


def test_robustness_fonts_are_readable_at_a_notebooks_width():
    ds = results.combine([classification_run("standard", False, [0.0]),
                          classification_run("clip", False, [0.1])])
    # five attacks, as classification.ipynb measures: pgd_l2's numbers under each name
    pgd = list(ds.attack.values).index("pgd_l2")
    five = ds.isel(attack=[pgd] * 5).assign_coords(attack=list(plots.ATTACK_LABELS))
    fig = plots.robustness(five)
    fig.canvas.draw()
    assert [ax.get_title() for ax in fig.axes] == list(plots.ATTACK_LABELS.values())
    texts = [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label,
                                           *ax.get_xticklabels(), *ax.get_yticklabels())]
    texts += list(fig.legends[0].get_texts())
    small = {t.get_text(): round(shown_size(fig, t), 1) for t in texts
             if t.get_text() and shown_size(fig, t) < 8}
    assert not small, f"shown below 8 pt in a notebook: {small}"
    first_column = [ax for ax in fig.axes if ax.get_subplotspec().is_first_col()]
    assert len(first_column) == 2 and all(ax.get_ylabel() == "accuracy" for ax in first_column)


def test_history_labels_the_variable_counts_whole_epochs_and_marks_the_warmup():
    run = classification_run("clip", False, [0.0, 0.1])
    fig = plots.history(run)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "clean test accuracy"  # not the variable's name, test_acc
    ticks = ax.xaxis.get_major_locator()()
    assert len(ticks) and all(float(t).is_integer() for t in ticks)  # no epoch 2.5
    assert not any("warm-up" in line.get_label() for line in ax.get_lines())  # none in config
    for schedule, want in (({"schedule": "Constant"}, []),
                           ({"schedule": "Warmup", "epochs": 0}, []),
                           ({"schedule": "Warmup", "epochs": 1}, [1]),
                           ({"schedule": "Discrepancy", "warmup": 6, "every": 2}, [6])):
        run.attrs["method_config"] = json.dumps({"method": "CLIP", "schedule": schedule})
        assert plots.warmups(run) == want
        ax = plots.history(run).axes[0]
        marks = [line for line in ax.get_lines() if "warm-up" in line.get_label()]
        drawn = [w for w in want if w < 2]  # the run's last epoch is 2: a longer warm-up is
        assert [line.get_xdata()[0] for line in marks] == drawn  # not drawn past the data
        assert [t.get_text() for t in ax.get_legend().get_texts() if "warm-up" in t.get_text()] \
            == [f"end of warm-up (λ = 0 for {w} epoch{'s' if w > 1 else ''})" for w in drawn]
        assert ax.get_xlim()[1] < 3 and ax.get_ylim() == (0, 1)  # accuracy: the whole range
    # a sweep whose methods differ: method_config is a variable, one value per run
    runs = [classification_run(m, False, [0.1]) for m in ("clip", "weight_decay")]
    runs[0].attrs["method_config"] = json.dumps({"schedule": {"schedule": "Warmup", "epochs": 2}})
    runs[1].attrs["method_config"] = json.dumps({"schedule": {"schedule": "Constant"}})
    sweep = results.combine(runs)
    assert "method_config" in sweep.data_vars and plots.warmups(sweep) == [2]


def test_tradeoff_legend_names_configurations_by_colour_and_measures_by_style():
    """One entry per configuration (colour, under the panels) and one per measure (marker
    and line style, in its panel): 4 configurations x 5 measures had made 20 entries that
    covered the lines; each line keeps its full name."""
    ds = results.combine([classification_run("clip", False, [0.0, 0.1, 1.0]),
                          classification_run("weight_decay", True, [0.0, 0.1, 1.0])])
    fig = plots.tradeoff(ds, attack="noise")
    measures = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert measures[:2] == ["clean", "Gaussian noise σ = 1"]
    assert not any("(σ) =" in t for t in measures)
    configs = [t.get_text() for t in fig.legends[0].get_texts()]
    assert configs == ["CLIP, corrected", "weight decay, published (sigmoid on logits)"]
    names = [ln.get_label() for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert "CLIP, corrected — Gaussian noise σ = 1" in names
    bounds = [t.get_text() for t in plots.tradeoff(ds, attack="pgd_l2").axes[1].get_legend()
              .get_texts()]
    assert bounds == ["lower", "upper"]
    # every λ is a labelled tick, λ = 0 as "0", left of the smallest λ > 0
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "0.1", "1"]
    one = plots.tradeoff(results.combine([classification_run("clip", False, [0.0, 0.1])]))
    assert [t.get_text() for t in one.legends[0].get_texts()] == ["CLIP, corrected"]


def test_theory_lipschitz_notes_the_floor_only_where_a_value_is_at_it():
    run = theory_run(0)
    assert "drawn at it" not in plots.theory_lipschitz(run).axes[0].get_title()
    run["clip_lip"] = run.clip_lip.where(run.lam_rel != 2.0, 1e-7)  # below the floor: drawn at it
    title = plots.theory_lipschitz(run).axes[0].get_title()
    assert title == "Lipschitz constant against λ (p = 1); values < 0.0001 drawn at it"
    both = theory_run(0)  # theory_power, p = 1 and 2: the same rule
    assert "drawn at it" not in plots.theory_power(both).axes[0].get_title()
    both["exact_lip"] = both.exact_lip.where(both.lam_rel < 1.0, 0.0)  # p = 1 at the constant
    assert "drawn at it" in plots.theory_power(both).axes[0].get_title()


def test_theory_fits_legends_sit_under_their_panels():
    """Inside (lower right) they covered the data points and the fits' right end."""
    fig = plots.theory_fits(theory_run(0))
    fig.canvas.draw()
    for ax in fig.axes:
        box = ax.get_legend().get_window_extent().transformed(fig.transFigure.inverted())
        assert box.y1 <= ax.get_position().y0


def test_regression_legend_sits_under_the_panel_and_theory_power_names_lambda_star():
    fig = plots.regression_fits(regression_run(0))
    fig.canvas.draw()
    (ax,) = fig.axes
    box = ax.get_legend().get_window_extent().transformed(fig.transFigure.inverted())
    assert box.y1 <= ax.get_position().y0  # inside, it covered the data of the first peak
    power = plots.theory_power(theory_run(0))
    for a in power.axes:
        assert "λ = λ* (p = 1)" in [t.get_text() for t in a.get_legend().get_texts()]

"""The notebooks in JupyterLab, driven through a headless Chromium as a researcher uses them.

A JupyterLab server on a temporary folder with copies of the notebooks (tiny parameters,
as a user who edited them); its kernels import this checkout's clipkit. The notebooks must
open without the "unsaved" mark, Run All without an error output, render their widgets
(progress bars, the explorer's dropdowns), redraw the explorer's figures in place when a
dropdown changes, and run again from an edited parameters cell.

Needs Chromium and chromedriver (Debian: ``apt-get install chromium chromium-driver``;
``.ci/run`` installs them and sets CLIPKIT_REQUIRE_BROWSER=1, so CI fails instead of
skipping when they are missing). About a minute.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import labdriver  # noqa: E402
from fake_sweeps import classification_run  # noqa: E402

from clipkit.experiments import results  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
pytestmark = pytest.mark.slow

#: the regression notebook at a size that runs in seconds
TINY_REGRESSION = {"n_train": 30, "n_test": 50, "epochs": 40, "batch_size": 30,
                   "hidden": [16], "grid_points": 51,
                   "options": {"clip": {"pairs": 8, "ascent_steps": 1}}}
#: the progress widget tqdm draws in a notebook, seen at any time during a run
WATCH_PROGRESS = """
window.clipkitSeen = window.clipkitSeen || {progress: 0};
new MutationObserver(() => {
  if (document.querySelector('.jp-OutputArea .widget-hprogress')) window.clipkitSeen.progress++;
}).observe(document.body, {childList: true, subtree: true});"""


def copy_notebook(name: str, root: Path, **defaults) -> None:
    """``notebooks/NAME`` into ``root`` with some parameters' defaults changed, and the
    Python version of this interpreter in its metadata (the one field of the stored
    metadata that depends on the machine; everything else must be as JupyterLab writes)."""
    nb = json.loads((NOTEBOOKS / name).read_text())
    (cell,) = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    lines = "".join(cell["source"]).split("\n")
    for key, value in defaults.items():
        pattern = re.compile(rf"^({key}: [^=]+= )(.*?)(  #.*)?$")
        hits = [i for i, line in enumerate(lines) if pattern.match(line)]
        assert len(hits) == 1, f"no parameter {key!r} in {name}"
        lines[hits[0]] = pattern.sub(
            lambda m, value=value: m.group(1) + repr(value) + (m.group(3) or ""), lines[hits[0]])
    cell["source"] = "\n".join(lines)
    nb["metadata"]["language_info"]["version"] = sys.version.split()[0]
    (root / name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    found = labdriver.find_browser()
    if isinstance(found, str):
        if os.environ.get("CLIPKIT_REQUIRE_BROWSER"):
            pytest.fail(f"CLIPKIT_REQUIRE_BROWSER is set, but {found}")
        pytest.skip(found)
    root, work = tmp_path_factory.mktemp("lab"), tmp_path_factory.mktemp("browser")
    sweep = root / "sweep"  # two methods x two settings, three λ: what explore.ipynb opens
    results.save(results.combine([classification_run(m, last, [0.0, 0.1, 1.0])
                                  for m in ("clip", "weight_decay") for last in (False, True)]),
                 sweep / results.COMBINED_NAME)
    copy_notebook("explore.ipynb", root, sweep_dir=str(sweep))
    copy_notebook("regression.ipynb", root, **TINY_REGRESSION)
    with labdriver.session(root, work) as page:
        yield page
    # on a failure, the server's log tells what the kernel did
    print((work / "jupyterlab.log").read_text()[-3000:])


def opens_clean(page: labdriver.Page, name: str) -> None:
    page.open(name)
    # JupyterLab may flash the mark while it loads; a notebook whose metadata differs from
    # what the kernel reports keeps it (the kernel's language_info arrives by its first idle)
    labdriver.wait_for(lambda: not page.dirty(), 30, f"{name} to show no unsaved changes")
    with pytest.raises(TimeoutError):
        labdriver.wait_for(page.dirty, 3, "the unsaved mark")


def test_explore_runs_and_its_dropdowns_redraw_in_place(lab):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = lab
    opens_clean(page, "explore.ipynb")
    page.run_all()
    assert page.errors() == []
    dropdowns = page.drv.find_elements(By.CSS_SELECTOR, f"{labdriver.NB} .widget-dropdown select")
    assert len(dropdowns) == 5  # method, setting, dataset, λ, attack
    before = page.images()
    assert len(before) == 3  # robustness, history, trade-off: one figure area

    def choose(index: int, text: str) -> list[str]:
        shown = page.images()
        page.drv.execute_script("arguments[0].scrollIntoView({block: 'center'});",
                                dropdowns[index])
        Select(dropdowns[index]).select_by_visible_text(text)
        return labdriver.wait_for(lambda: (now := page.images()) != shown and
                                  len(now) == 3 and now, 60, f"the figures for {text}")

    after = choose(0, "weight decay")
    assert after[0] != before[0] and len(after) == 3  # replaced, not added below
    # the figures stay in the explorer's cell, below its dropdowns
    assert page.js("""
        const cell = arguments[0].closest('.jp-Cell');
        return cell.querySelectorAll('.jp-OutputArea-output img').length;""",
                   dropdowns[0]) == 3
    assert page.log_messages() == 0  # no error from a callback in the log console
    # edit the parameters cell and run from there: the check passes, the controls work
    page.edit_line("attack:", 'attack: str = "noise"')
    page.run_from_here()
    assert page.errors() == []
    dropdowns = page.drv.find_elements(By.CSS_SELECTOR, f"{labdriver.NB} .widget-dropdown select")
    assert Select(dropdowns[4]).first_selected_option.text == "Gaussian noise (σ)"
    choose(3, "λ = 1")
    assert page.log_messages() == 0 and page.errors() == []


def test_a_training_notebook_shows_progress_and_reruns_after_an_edit(lab):
    page = lab
    opens_clean(page, "regression.ipynb")
    page.js(WATCH_PROGRESS)
    page.run_all()
    assert page.errors() == []
    assert page.js("return window.clipkitSeen.progress;") > 0  # tqdm's widget was drawn
    assert len(page.images()) == 1  # the fits
    printed = page.outputs("application/vnd.jupyter.stdout")
    assert any("test MSE" in text for text in printed)
    page.edit_line("epochs:", "epochs: int = 20")
    page.run_from_here()
    assert page.errors() == []  # once: ParameterError, unknown parameter(s) 'E_const', ...
    again = page.outputs("application/vnd.jupyter.stdout")
    assert any("test MSE" in text for text in again) and again != printed

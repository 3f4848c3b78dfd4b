"""Every notebook declares its parameters so that papermill and clipkit both read all of them."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def declared(notebook: Path) -> list[str]:
    """The annotated names of the cell tagged ``parameters``, read with Python's own parser."""
    cells = json.loads(notebook.read_text())["cells"]
    (cell,) = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    tree = ast.parse("".join(cell["source"]))
    return [n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_sees_every_declared_parameter(notebook):
    names = declared(notebook)
    assert names and "result_path" in names or notebook.name == "explore.ipynb"
    # a comment with '=' in it once hid a parameter from papermill's parser
    assert sorted(papermill.inspect_notebook(str(notebook))) == sorted(names)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(notebook):
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "code":
            assert not cell["outputs"] and cell["execution_count"] is None


def test_notebooks_are_as_nbstripout_leaves_them():
    """What the git filter / pre-commit hook (README) would commit: no outputs, no execution
    counts, no widget state, cell ids 0, 1, ... ."""
    pytest.importorskip("nbstripout", reason="nbstripout is in the dev extras")
    run = subprocess.run([sys.executable, "-m", "nbstripout", "--verify", *map(str, NOTEBOOKS)],
                         capture_output=True, text=True)
    assert run.returncode == 0, (
        f"{run.stdout}{run.stderr}: strip them with `nbstripout notebooks/*.ipynb`")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_metadata_is_what_jupyterlab_writes(notebook):
    """JupyterLab marks a notebook "unsaved" as soon as it opens when its kernel reports
    another kernelspec or language_info than the file has (tests/paper/test_jupyterlab.py
    checks it in a browser). Only the Python version differs between machines."""
    from ipykernel.ipkernel import IPythonKernel

    meta = json.loads(notebook.read_text())["metadata"]
    assert meta["kernelspec"] == {"display_name": "Python 3 (ipykernel)", "language": "python",
                                  "name": "python3"}
    expected = {k: v for k, v in IPythonKernel.language_info.items() if k != "version"}
    assert {k: v for k, v in meta["language_info"].items() if k != "version"} == expected
    assert set(meta) == {"kernelspec", "language_info"}


PAPER = NOTEBOOKS[0].parents[1] / "paper"


@pytest.mark.parametrize("spec", sorted(PAPER.glob("*.yaml")), ids=lambda p: p.name)
def test_every_paper_profile_passes_the_notebooks_own_checks(spec):
    """``sweep.check`` runs each notebook's cells tagged ``checks`` for every point."""
    import yaml

    from clipkit.experiments import sweep
    from clipkit.experiments.sweep import checks

    _, points = sweep.check(spec)
    assert checks.check_cells(sweep.load_spec(spec).notebook)  # the notebook has checks
    for profile in yaml.safe_load(spec.read_text()).get("profiles", {}):
        assert sweep.check(spec, profile)[1]


@pytest.mark.parametrize(
    "notebook, fixed, message",
    [
        ("classification", {"dataset": "cifar10"},
         r"parameter 'dataset' = 'cifar10'; accepted: 'mnist', 'fashion-mnist'"),
        ("classification", {"lam": [-0.1]}, r"parameter 'lam' must be a finite number >= 0"),
        ("classification", {"options": {"clip": {"pairs": 0}}}, r"pairs must be an int >= 1"),
        ("classification", {"model": "resnet"}, r"unknown kind 'resnet'"),
        ("regression", {"methods": ["clip", "lipschitz"]}, r"unknown method 'lipschitz'"),
        ("lambda_to_constant", {"powers": [3]}, r"parameter 'powers' = 3; accepted: 1, 2"),
        # each of these passed the checks and failed in a later cell, some after training
        ("classification", {"eps_pgd_l2": [0.0, -1.0]},
         r"parameter 'eps_pgd_l2' must be a finite number >= 0 \(each value\)"),
        ("classification", {"lam": [0.1, -0.1]}, r"parameter 'lam' must be a finite number"),
        ("classification", {"lam": [0.1, 0.1]}, r"parameter 'lam' repeats 0.1"),
        ("classification", {"method": "standard", "lam": [0.0, 0.1]},
         r"Standard has no penalty weight: lam must be 0, got 0.1"),
        ("lambda_to_constant", {"hidden": [0]}, r"parameter 'hidden' must be >= 1 \(each"),
        ("lambda_to_constant", {"lam_factors": [0.1, 0.1]}, r"'lam_factors' repeats 0.1"),
        ("regression", {"options": {"clip": {"pair": 3}}}, r"did you mean 'pairs'"),
    ],
)
def test_the_notebooks_checks_refuse_bad_values_before_a_sweep_runs(tmp_path, notebook, fixed,
                                                                   message):
    from clipkit.experiments import sweep

    spec = {"notebook": str(NOTEBOOKS[0].parent / f"{notebook}.ipynb"), "fixed": fixed}
    with pytest.raises(sweep.SweepError, match=r"1 of 1 points have values .* rejects.*\n.*"
                                               + message):
        sweep.run(spec, out=tmp_path / "out", dry_run=True)
    assert not (tmp_path / "out").exists()

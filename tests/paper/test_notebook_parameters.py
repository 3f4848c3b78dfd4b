"""Every notebook declares its parameters so that papermill and clipkit both read all of them."""

import ast
import json
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

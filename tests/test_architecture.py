"""The package's architecture holds: imports point down the layers, no private names cross
modules, modules stay small, and every layer says what it owns."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "clipkit"

#: layer of each subpackage; a module may import its own layer and the ones with a lower
#: rank, except that train and analysis (both rank 1) may not import each other
RANK = {"core": 0, "train": 1, "analysis": 1, "experiments": 2, "paper": 3}
TOP = 4  # clipkit/__init__.py, cli.py, __main__.py: the user-facing entry points
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) of every import in ``path``, absolute."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((target, [a.name for a in node.names], node.lineno))
    return found


def test_the_module_list_is_not_empty():
    assert len(modules()) > 30 and all(layer(module_name(p)) or p.parent == PACKAGE
                                       for p in modules())


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    me = layer(module_name(path))
    rank = RANK[me] if me else TOP
    for target, names, line in imports(path):
        if not target.startswith("clipkit"):
            continue
        targets = [target] + [f"{target}.{n}" for n in names]  # `from clipkit import data`
        for t in targets:
            other = layer(t)
            if t == "clipkit" and me is not None:
                pytest.fail(f"{path.name}:{line} imports the top-level package clipkit")
            if other is None:
                continue
            assert RANK[other] <= rank, f"{path.name}:{line}: {me} imports {t} ({other})"
            if rank == RANK[other] and me != other:
                pytest.fail(f"{path.name}:{line}: {me} imports its sibling layer {other} ({t})")


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_is_imported_from_another_module(path):
    for target, names, line in imports(path):
        if target.startswith("clipkit"):
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            assert not private, f"{path.name}:{line} imports {private} from {target}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines"


@pytest.mark.parametrize("name", sorted(RANK))
def test_every_layer_says_what_it_owns_and_may_import(name):
    doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
    assert doc and "import" in doc and len(doc) > 200, name


def test_the_import_check_catches_an_upward_import(tmp_path, monkeypatch):
    bad = tmp_path / "clipkit" / "core" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from clipkit.experiments import results\nfrom ..paper.report import _x\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "clipkit")
    with pytest.raises(AssertionError, match="core imports clipkit.experiments"):
        test_imports_point_down_the_layers(bad)
    with pytest.raises(AssertionError, match=r"\['_x'\]"):
        test_no_private_name_is_imported_from_another_module(bad)


def test_every_public_name_is_imported_when_first_used():
    """clipkit/__init__.py lists its names in __all__ and, separately, where each is
    imported from (its lazy __getattr__): the two lists stay one set, and each name resolves
    in a fresh interpreter that has not imported torch before."""
    import subprocess
    import sys

    import clipkit

    assert set(clipkit.__all__) == {*clipkit._MODULES, *clipkit._ATTRIBUTES}
    code = ("import sys, clipkit; assert 'torch' not in sys.modules; "
            "from clipkit import *; missing = [n for n in clipkit.__all__ if n not in globals()]; "
            "assert not missing, missing")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)

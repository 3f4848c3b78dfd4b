import re
from pathlib import Path

import clipkit as ck


def test_the_version_is_the_one_pyproject_declares():
    # results record ck.__version__ (their clipkit_version attr): it must name this code
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"$', text, re.MULTILINE).group(1)
    assert ck.__version__ == declared

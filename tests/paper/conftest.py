"""Shared by the tests of the figures, the explorer and the report."""

import matplotlib
import matplotlib.pyplot as plt
import pytest

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    """Each test's figures closed after it (pyplot keeps every open figure alive)."""
    yield
    plt.close("all")

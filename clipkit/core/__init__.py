"""The core layer: what every other layer stands on.

Owns data sets (``data``), model builders (``models``), run provenance (``provenance``),
small shared helpers (``utils``), and the two algorithms used both in training and in
analysis: the pair-quotient ascent (``pairs``) and projected gradient ascent on a loss
(``pgd``). It imports no other part of clipkit.
"""

__version__ = "0.2.0.dev0"  # as pyproject.toml (tests/test_version.py)

"""The paper layer: the figures, tables and reproduction report of the CLIP paper.

Owns the figures drawn from result Datasets (``plots``), the tables and the report built
from a template (``tables``, ``report``) and ``clipkit reproduce`` (``reproduce``), which
runs every sweep of the repository's ``paper/`` folder and rebuilds the report. It may
import every layer below it.
"""

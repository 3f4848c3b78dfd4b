"""clipkit: Cheap Lipschitz training (CLIP) of neural networks, and the tools around it.

>>> import clipkit as ck
>>> x, y = ck.data.regression(n=200, noise=0.1, seed=0)
>>> model = ck.models.mlp([1, 64, 64, 1], activation="relu", seed=0)
>>> hist = ck.fit(model, (x, y), method=ck.CLIP(lam=0.1), epochs=200, seed=0)

The package is layered; each layer imports only the ones below it (``docs/architecture.md``):

* ``clipkit.core``: data, models, provenance, helpers, the shared pair ascent and PGD;
* ``clipkit.train``: methods (CLIP and the baselines), schedules, ``fit``, ``fit_path``;
* ``clipkit.analysis``: Lipschitz estimators, attacks, the λ → constant theory;
* ``clipkit.experiments``: result files, evaluation into Datasets, notebooks, sweeps;
* ``clipkit.paper``: figures, tables, the reproduction report, ``clipkit reproduce``.

This namespace gathers what a user types: ``ck.fit``, ``ck.CLIP``, ``ck.data``,
``ck.lipschitz``, ``ck.certify``, ``ck.attacks``, ``ck.theory``, ``ck.results``, ...
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# The names are imported when first used (PEP 562), so that what needs only a light part
# (``clipkit --help``, a notebook that writes results with ``from clipkit import results``)
# does not wait for torch: a full import takes seconds, most of them torch's.
_MODULES = {
    "attacks": "clipkit.analysis.attacks", "certify": "clipkit.analysis.certify",
    "lipschitz": "clipkit.analysis.lipschitz", "theory": "clipkit.analysis.theory",
    "data": "clipkit.core.data", "models": "clipkit.core.models",
    "curves": "clipkit.experiments.curves", "evaluate": "clipkit.experiments.evaluate",
    "notebook": "clipkit.experiments.notebook", "results": "clipkit.experiments.results",
    "sweep": "clipkit.experiments.sweep", "path": "clipkit.train.path",
    "schedules": "clipkit.train.schedules",
}
_ATTRIBUTES = {
    **dict.fromkeys(
        ["CLIP", "AdversarialTraining", "BestEpoch", "Constant", "Discrepancy",
         "GradientPenalty", "Method", "NonFiniteLossError", "SpectralNorm", "Standard",
         "Warmup", "WeightDecay", "fit", "fit_path"], "clipkit.train"),
    "make_method": "clipkit.train.registry", "make_schedule": "clipkit.train.registry",
    "__version__": "clipkit.core",
}

if TYPE_CHECKING:  # what type checkers and editors see
    from clipkit.analysis import attacks, certify, lipschitz, theory
    from clipkit.core import __version__, data, models
    from clipkit.experiments import curves, evaluate, notebook, results, sweep
    from clipkit.train import (
        CLIP,
        AdversarialTraining,
        BestEpoch,
        Constant,
        Discrepancy,
        GradientPenalty,
        Method,
        NonFiniteLossError,
        SpectralNorm,
        Standard,
        Warmup,
        WeightDecay,
        fit,
        fit_path,
        path,
        schedules,
    )
    from clipkit.train.registry import make_method, make_schedule


def __getattr__(name: str):
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _ATTRIBUTES:
        value = getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    else:
        raise AttributeError(f"module 'clipkit' has no attribute {name!r}")
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "CLIP",
    "AdversarialTraining",
    "BestEpoch",
    "Constant",
    "Discrepancy",
    "GradientPenalty",
    "Method",
    "NonFiniteLossError",
    "SpectralNorm",
    "Standard",
    "Warmup",
    "WeightDecay",
    "__version__",
    "attacks",
    "certify",
    "curves",
    "data",
    "evaluate",
    "fit",
    "fit_path",
    "lipschitz",
    "make_method",
    "make_schedule",
    "models",
    "notebook",
    "path",
    "results",
    "schedules",
    "sweep",
    "theory",
]

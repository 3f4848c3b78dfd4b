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

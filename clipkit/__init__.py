"""clipkit: Cheap Lipschitz training (CLIP) of neural networks, and the tools around it.

>>> import clipkit as ck
>>> x, y = ck.data.regression(n=200, noise=0.1, seed=0)
>>> model = ck.models.mlp([1, 64, 64, 1], activation="relu", seed=0)
>>> hist = ck.fit(model, (x, y), method=ck.CLIP(lam=0.1), epochs=200, seed=0)
"""

__version__ = "0.1.0"

from . import attacks, data, lipschitz, models, notebook, schedules, theory  # noqa: E402
from .clip import CLIP  # noqa: E402
from .path import fit_path  # noqa: E402
from .regularizers import (  # noqa: E402
    AdversarialTraining,
    GradientPenalty,
    Method,
    SpectralNorm,
    Standard,
    WeightDecay,
)
from .schedules import Constant, Discrepancy, Warmup  # noqa: E402
from .train import NonFiniteLossError, fit  # noqa: E402

__all__ = [
    "CLIP",
    "AdversarialTraining",
    "Constant",
    "Discrepancy",
    "GradientPenalty",
    "Method",
    "NonFiniteLossError",
    "SpectralNorm",
    "Standard",
    "Warmup",
    "WeightDecay",
    "attacks",
    "data",
    "fit",
    "fit_path",
    "lipschitz",
    "models",
    "notebook",
    "schedules",
    "theory",
]

"""The training layer: every method, one loop, and the vectorised λ-path.

Owns what happens while θ is trained: the method protocol (``protocol``: the hooks a
method gives the loop), CLIP (``clip``), the baselines (``baselines``), λ schedules
(``schedules``), methods by name (``registry``), the loop (``setup``, ``loop``, ``history``),
what it does after each epoch (``selection``: measurements, the kept epoch) and its two
entry points, :func:`fit` (one model) and :func:`fit_path` (K copies over a λ
and seed grid, vmapped). It may import ``clipkit.core`` only.
"""

from clipkit.train.baselines import (
    AdversarialTraining,
    GradientPenalty,
    SpectralNorm,
    Standard,
    WeightDecay,
)
from clipkit.train.clip import CLIP
from clipkit.train.fit import fit
from clipkit.train.path import fit_path, init_copy, model_at
from clipkit.train.protocol import Method, Run, Step
from clipkit.train.schedules import Constant, Discrepancy, Schedule, Warmup
from clipkit.train.selection import BestEpoch
from clipkit.train.setup import NonFiniteLossError

__all__ = [
    "CLIP",
    "AdversarialTraining",
    "BestEpoch",
    "Constant",
    "Discrepancy",
    "GradientPenalty",
    "Method",
    "NonFiniteLossError",
    "Run",
    "Schedule",
    "SpectralNorm",
    "Standard",
    "Step",
    "Warmup",
    "WeightDecay",
    "fit",
    "fit_path",
    "init_copy",
    "model_at",
]

"""Input handling shared by the theory modules: float64 arrays, argument checks, merged inputs."""

from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.spatial.distance
import scipy.special
import torch

LOSSES = ("squared", "cross_entropy")
POWERS = (1, 2)


def to_numpy(a, name: str) -> np.ndarray:
    """``a`` (torch tensor, numpy array or nested sequence) as a float64 numpy array."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().to(torch.float64).numpy()
    try:
        out = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(a)!r}") from err
    return out


def as_x(x, name: str = "x") -> np.ndarray:
    """Inputs as an (N, d) float64 array; accepts (N,), (N, d), or (N, *shape) flattened
    (distances are ℓ2 on flattened tensors, as everywhere in clipkit)."""
    x = to_numpy(x, name)
    if x.ndim == 0:
        raise ValueError(f"{name} must have shape (N,) or (N, d), got a scalar")
    x = x.reshape(len(x), -1)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite; it has NaN or inf entries")
    return x


def as_y(y, name: str = "y") -> tuple[np.ndarray, bool]:
    """Labels as an (N, m) float64 array, and whether they came as a vector (N,)."""
    y = to_numpy(y, name)
    vector = y.ndim == 1
    if vector:
        y = y[:, None]
    elif y.ndim != 2:
        raise ValueError(f"{name} must have shape (N,) or (N, m), got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} must be finite; it has NaN or inf entries")
    return y, vector


def as_xy(x, y) -> tuple[np.ndarray, np.ndarray, bool]:
    """Checked (x (N, d), y (N, m), y_was_vector); N ≥ 2 and equal lengths."""
    x = as_x(x)
    y, vector = as_y(y)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length N, got {len(x)} and {len(y)}")
    if len(x) < 2:
        raise ValueError(f"need at least N = 2 data points, got N = {len(x)}")
    return x, y, vector


def check_lam(lam, allow_zero: bool = True) -> float:
    """λ as a float; finite and ≥ 0 (> 0 when ``allow_zero`` is False)."""
    if isinstance(lam, torch.Tensor) and lam.numel() == 1:
        lam = lam.item()
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise TypeError(f"lam must be a real number, got {lam!r}")
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0 or (lam == 0 and not allow_zero):
        accepted = "finite and >= 0" if allow_zero else "finite and > 0"
        raise ValueError(f"lam must be {accepted}, got {lam!r}")
    return lam


def check_power(power) -> int:
    if isinstance(power, bool) or power not in POWERS:
        raise ValueError(f"power must be 1 or 2 (penalty λ·Lip or λ·Lip²), got {power!r}")
    return int(power)


def check_loss(loss) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return loss


def merge_equal_inputs(x: np.ndarray, y: np.ndarray):
    """Merge equal rows of x: (unique x (K, d), label means (K, m), counts (K,), inverse (N,)).

    Rows come back in lexicographic order, so in 1-D they are sorted.
    """
    xu, inverse, counts = np.unique(x, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(xu), y.shape[1]))
    np.add.at(sums, inverse, y)
    return xu, sums / counts[:, None], counts, inverse


def index_pairs(k: int, one_d: bool) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) that carry the Lipschitz constraint: consecutive in 1-D, all in d-D."""
    if one_d:
        i = np.arange(k - 1)
        return i, i + 1
    i, j = np.triu_indices(k, 1)
    return i, j


def difference_matrix(i: np.ndarray, j: np.ndarray, k: int) -> scipy.sparse.csr_matrix:
    """Sparse D with (D z)_p = z_{j_p} − z_{i_p}."""
    rows = np.arange(len(i))
    data = np.concatenate([-np.ones(len(i)), np.ones(len(i))])
    return scipy.sparse.csr_matrix(
        (data, (np.concatenate([rows, rows]), np.concatenate([i, j]))), shape=(len(i), k)
    )

"""Data: the 1-D regression problem, and MNIST / Fashion-MNIST from a data root or torchvision.

Image data sets come back as tensors ``x`` of shape (N, 1, 28, 28), float32 in [0, 1],
and ``y`` of shape (N,), int64 class labels.

The data root is, in order: the ``root`` argument, the environment variable
``CLIPKIT_DATA``, or ``~/.cache/clipkit``. Under it, the IDX files (gzip or not) are
looked for in ``<root>/<name>/`` (``fashion-mnist``, ``mnist``) and in torchvision's
layout ``<root>/<Class>/raw/``. When they are missing, torchvision downloads them
(where a network exists); when it cannot, the error names the missing files and where
to put them.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "DataNotFoundError",
    "data_root",
    "fashion_mnist",
    "hold_out",
    "load",
    "mnist",
    "regression",
    "regression_target",
    "train_test",
]

DATASETS = ("mnist", "fashion-mnist")
_TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataNotFoundError(FileNotFoundError):
    """The files of a data set are neither on disk nor downloadable."""


def regression_target(x: torch.Tensor) -> torch.Tensor:
    """The noise-free 1-D target g(x) = 1 + sin(2πx) + x², on x ∈ [−1, 1].

    Nonlinear, with a mean clearly away from 0 (≈ 1.33 on [−1, 1]), so that the
    limit of CLIP (the label mean) and of weight decay (the zero network) differ.
    """
    return 1.0 + torch.sin(2 * math.pi * x) + x**2


def regression(
    n: int = 200,
    noise: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1-D regression problem: x ~ U[−1, 1] (sorted), y = g(x) + noise·N(0, 1).

    Returns ``x`` and ``y`` of shape (n, 1). ``g`` is :func:`regression_target`.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ValueError(f"regression: n must be an int >= 2, got {n!r}")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"regression: noise must be a finite number >= 0, got {noise!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"regression: seed must be an int >= 0, got {seed!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"regression: dtype must be a torch floating dtype such as "
                         f"torch.float32, got {dtype!r}")
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.rand(n, 1, generator=gen, dtype=torch.float64) * 2 - 1
    x, _ = torch.sort(x, dim=0)
    y = regression_target(x) + noise * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root, absolute: ``root``, else ``$CLIPKIT_DATA``, else ``~/.cache/clipkit``.

    A relative path is taken from the current folder (so errors name the folder that was
    searched). In a sweep, the runner has already made ``CLIPKIT_DATA`` absolute from the
    folder where the user started it, and the kernel (which runs in its notebook's
    folder) inherits that.
    """
    if root is not None:
        return Path(root).expanduser().absolute()
    env = os.environ.get("CLIPKIT_DATA")
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".cache" / "clipkit"


def _check_name(name: str) -> str:
    key = str(name).lower().replace("_", "-")
    if key == "fashionmnist":
        key = "fashion-mnist"
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    return key


def _candidates(root: Path, name: str, stem: str) -> list[Path]:
    folders = [root / name, root / _TORCHVISION_CLASS[name] / "raw", root / name / "raw"]
    return [f / (stem + ext) for f in folders for ext in ("", ".gz")]


def _find(root: Path, name: str, stem: str) -> Path | None:
    return next((p for p in _candidates(root, name, stem) if p.is_file()), None)


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip or not).

    Written by hand because torchvision's reader takes only uncompressed files at its
    own paths; the format is a 4-byte magic (dtype code, ndim), then big-endian sizes.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (gzip.BadGzipFile, EOFError) as exc:  # gzip's message does not name the file
        raise ValueError(f"{path} is not a readable gzip file ({exc}); replace it with the "
                         f"original .gz, or its unpacked IDX file without .gz") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {shape} values, found {data.size} (truncated?)")
    return data.reshape(shape)


def _download(root: Path, name: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION_CLASS[name])
    raw = root / _TORCHVISION_CLASS[name] / "raw"
    created = [p for p in (raw, *raw.parents) if not p.exists()]  # deepest first
    try:
        ds = cls(str(root), train=train, download=True)
    except BaseException:
        # a failed download (no network, a mistyped root) leaves no empty folders behind
        for folder in created:
            with contextlib.suppress(OSError):  # not empty (a partial file): kept
                folder.rmdir()
        raise
    return ds.data.numpy(), ds.targets.numpy()


def load(
    name: str,
    train: bool = True,
    *,
    root: str | os.PathLike | None = None,
    n: int | None = None,
    download: bool = True,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST or Fashion-MNIST as (x, y): x (N, 1, 28, 28) float32 in [0, 1], y (N,) int64.

    ``n`` keeps a subset: the first ``n`` images, or ``n`` images drawn without
    replacement when a ``seed`` is given.
    """
    key = _check_name(name)
    if not isinstance(train, (bool, np.bool_)):
        raise ValueError(f"load: train must be True (the training split) or False (the test "
                         f"split), got {train!r}")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"load: n must be a positive int or None, got {n!r}")
    base = data_root(root)
    stems = _FILES[bool(train)]
    paths = [_find(base, key, s) for s in stems]
    if all(paths):
        images, labels = (_read_idx(p) for p in paths)
    else:
        missing = [s for s, p in zip(stems, paths, strict=True) if p is None]
        error = None
        if download:
            try:
                images, labels = _download(base, key, bool(train))
            except Exception as exc:  # network, permissions, ... : report below
                error = exc
        if not download or error is not None:
            where = base / key
            msg = (
                f"{key} ({'train' if train else 'test'} split): missing "
                f"{', '.join(m + '[.gz]' for m in missing)} in {where} "
                f"(or {base / _TORCHVISION_CLASS[key] / 'raw'}). Put the IDX files there, "
                "or set CLIPKIT_DATA / pass root= to a folder that has them"
            )
            if error is not None:
                msg += f"; downloading through torchvision failed: {error}"
            env = os.environ.get("CLIPKIT_DATA", "")
            if env and not Path(env).expanduser().is_absolute():
                msg += (f". CLIPKIT_DATA={env} is relative, so it was taken from the current "
                        f"folder {Path.cwd()}; a Jupyter kernel runs in its notebook's folder, "
                        f"not where JupyterLab was started: give an absolute path")
            if key == "mnist" and train:
                msg += (". Without the MNIST training images, ck.data.train_test('mnist') "
                        "divides the test split into a training and a test part")
            raise DataNotFoundError(msg)
    if len(images) != len(labels):
        raise ValueError(f"{key}: {len(images)} images but {len(labels)} labels")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    if n is not None and n > len(y):
        raise ValueError(f"load: n={n}, but the {key} {'training' if train else 'test'} split "
                         f"has {len(y)} images; n=None takes them all")
    if n is not None and n < len(y):
        if seed is None:
            idx = torch.arange(n)
        else:
            idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
        x, y = x[idx], y[idx]
    return x, y


def mnist(train: bool = True, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as (x, y); see :func:`load`."""
    return load("mnist", train, **kwargs)


def fashion_mnist(train: bool = True, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as (x, y); see :func:`load`."""
    return load("fashion-mnist", train, **kwargs)


def train_test(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    split: float = 0.8,
    download: bool = True,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], str]:
    """Train and test data of MNIST / Fashion-MNIST, and a sentence saying what they are.

    The official splits when their files are there (or can be downloaded). When only the
    **test** split is available (MNIST on machines without internet: its training images
    are not shipped offline), the 10,000 test images are split by a seeded permutation
    into a training part (``split``, 8,000 by default) and a test part (the rest), and
    the returned sentence says so: report it with the results.

    ``n_train`` / ``n_test`` keep seeded random subsets of the two parts.
    """
    key = _check_name(name)
    # checked before loading: with the official split present, ``split`` is not used,
    # but a wrong value is a mistake either way
    if (isinstance(split, bool) or not isinstance(split, (int, float, np.floating))
            or not 0 < split < 1):
        raise ValueError(f"train_test: split must be a number in (0, 1), the training "
                         f"fraction of a lone test split, got {split!r}")
    for n in (n_train, n_test):
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ValueError(f"train_test: sizes must be positive ints or None, got {n!r}")
    try:
        train = load(key, True, root=root, download=download)
        test = load(key, False, root=root, download=download)
        source = f"{key}: official train ({len(train[1])}) / test ({len(test[1])}) split"
    except DataNotFoundError as exc:
        try:
            x, y = load(key, False, root=root, download=False)
        except DataNotFoundError:
            raise exc from None
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        cut = int(round(split * len(y)))
        train, test = (x[perm[:cut]], y[perm[:cut]]), (x[perm[cut:]], y[perm[cut:]])
        source = (
            f"{key}: training images not available, so the official TEST split (10,000 "
            f"images) was split by a seeded permutation (seed {seed}) into {cut} training "
            f"and {len(y) - cut} test images"
        )

    def subset(part, n, offset):
        if n is None or n >= len(part[1]):
            return part
        idx = torch.randperm(len(part[1]), generator=torch.Generator().manual_seed(seed + offset))
        return part[0][idx[:n]], part[1][idx[:n]]

    sizes = (len(train[1]), len(test[1]))
    train, test = subset(train, n_train, 1), subset(test, n_test, 2)
    if (len(train[1]), len(test[1])) != sizes:
        source += f"; seeded subsets: {len(train[1])} train, {len(test[1])} test"
    return train, test, source


def hold_out(
    data: tuple[torch.Tensor, torch.Tensor], fraction: float, seed: int = 0,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Split ``data`` into a training part and a held-out part of ``fraction`` of it.

    A seeded permutation puts ``len − int((1 − fraction)·len)`` points into the held-out
    part (the CLIP authors' validation split: 10 %, 6,000 of 60,000 images) and the rest,
    in permuted order, into the training part. Returns ``(train, held_out)``.
    """
    x, y = data
    if len(x) != len(y):
        raise ValueError(f"hold_out: x and y have different lengths ({len(x)} and {len(y)})")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 < fraction < 1:
        raise ValueError(f"hold_out: fraction must be in (0, 1), got {fraction!r}")
    n = len(y)
    keep = int((1 - fraction) * n)
    if keep < 1 or keep >= n:
        raise ValueError(f"hold_out: {fraction!r} of {n} points leaves an empty part")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return (x[perm[:keep]], y[perm[:keep]]), (x[perm[keep:]], y[perm[keep:]])

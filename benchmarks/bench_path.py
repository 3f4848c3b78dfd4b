"""Speed-up of one vectorised ``fit_path`` over K separate ``fit`` calls, in one run.

K = 16 λ values of CLIP (clipkit defaults), for the regression MLP 1-64-64-1 and the
MNIST MLP 784-200-80-10 (MNIST-shaped data: real when CLIPKIT_DATA has it, else random).
On a GPU it also prints the peak GPU memory per model.

    python benchmarks/bench_path.py [--k 16] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import clipkit as ck
from clipkit.core.utils import resolve_device
from clipkit.train.path import init_copy


def mnist_shaped(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    for name in ("mnist", "fashion-mnist"):
        try:
            x, y = ck.data.load(name, train=True, n=n, download=False)
            return x.flatten(1), y
        except ck.data.DataNotFoundError:
            continue
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 784, generator=gen), torch.randint(10, (n,), generator=gen)


def _timed(fn, dev) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def compare(name, model_fn, data, lams, device, repeat=2, **kw) -> None:
    """Best of ``repeat`` alternating rounds (separate fits, then the path)."""
    dev = resolve_device(device)

    def separate_fits():
        for lam in lams:
            ck.fit(init_copy(model_fn, 0), data, ck.CLIP(lam=lam), seed=0, device=dev,
                   progress=False, **kw)

    def one_path():
        ck.fit_path(model_fn, data, ck.CLIP(), lam=lams, seed=0, device=dev, progress=False,
                    **kw)

    separate = path = float("inf")
    for _ in range(repeat):
        separate = min(separate, _timed(separate_fits, dev))
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        path = min(path, _timed(one_path, dev))
    line = (f"{name:<28} K={len(lams):<3} separate {separate:7.2f} s   path {path:7.2f} s   "
            f"speed-up {separate / path:5.2f}x")
    if dev.type == "cuda":
        per_model = torch.cuda.max_memory_allocated() / len(lams) / 2**20
        line += f"   peak GPU memory per model {per_model:.1f} MiB"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mnist-n", type=int, default=2048)
    args = parser.parse_args()
    lams = list(np.geomspace(1e-3, 10, args.k))
    print(f"torch {torch.__version__}, device {resolve_device(args.device)}, "
          f"{torch.get_num_threads()} threads")
    x, y = ck.data.regression(n=200, noise=0.1, seed=0)
    compare("regression MLP 1-64-64-1", lambda: ck.models.mlp([1, 64, 64, 1]), (x, y), lams,
            args.device, epochs=20, batch_size=128, lr=1e-2)
    xm, ym = mnist_shaped(args.mnist_n)
    compare("MNIST MLP 784-200-80-10", lambda: ck.models.mlp([784, 200, 80, 10]), (xm, ym), lams,
            args.device, epochs=1, batch_size=128, lr=1e-3)


if __name__ == "__main__":
    main()

"""Time the Lipschitz bracket on the paper's MNIST MLP 784-200-80-10 (random init).

    python benchmarks/bench_lipschitz.py [--samples 512] [--activation sigmoid] [--seed 0]

Prints the bracket (lower, upper, upper/lower) and each estimator's time, for a cold first call
(one-time costs: LAPACK and torch.func set-up) and a warm second call. Samples are MNIST test
images when $CLIPKIT_DATA/mnist/t10k-images-idx3-ubyte.gz exists, else uniform [0, 1) images.
Target: the whole bracket in under 5 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clipkit import lipschitz


def samples(n: int, seed: int) -> tuple[torch.Tensor, str]:
    """n MNIST test images scaled to [0, 1] (flattened), or uniform noise when absent."""
    root = Path(os.environ.get("CLIPKIT_DATA", Path(__file__).parents[2] / "shared" / "data"))
    path = root / "mnist" / "t10k-images-idx3-ubyte.gz"
    if path.exists():
        with gzip.open(path, "rb") as f:
            raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)  # IDX header: 16 bytes
        x = torch.from_numpy(raw.reshape(-1, 784)[:n].astype(np.float32) / 255.0)
        return x, f"{len(x)} MNIST test images ({path})"
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 784, generator=g), f"{n} uniform [0,1) images (no MNIST at {path})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--activation", choices=["sigmoid", "relu"], default="sigmoid")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    act = nn.Sigmoid if args.activation == "sigmoid" else nn.ReLU
    model = nn.Sequential(nn.Linear(784, 200), act(), nn.Linear(200, 80), act(),
                          nn.Linear(80, 10))
    x, what = samples(args.samples, args.seed)
    print(f"model 784-200-80-10 {args.activation}, random init; samples: {what}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        b = lipschitz.bracket(model, x, seed=args.seed)
        total = time.perf_counter() - t0
        print(f"\n[{label}] whole bracket: {total:.2f} s "
              f"({'under' if total < 5 else 'OVER'} the 5 s target)")
        print(f"  lower {b.lower:.6g} ({b.lower_by.method})")
        print(f"  upper {b.upper:.6g} ({b.upper_by.method})")
        print(f"  upper/lower {b.ratio:.4g}")
        for e in b.estimates:
            print(f"  {e.kind:>5} {e.value:10.6g}  {e.seconds:6.3f} s  {e.method}")


if __name__ == "__main__":
    main()

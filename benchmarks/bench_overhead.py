"""The host's share of a training step: time per step on a model too small to compute.

On a GPU at clipkit's sizes the host sets the pace: Python, torch's dispatch and the kernel
launches (docs/method.md). This script trains an MLP 16-8-8-4 on random data, one CPU
thread, where the arithmetic is negligible, so a step's time is what the host does for it:
the part of a GPU step that no faster GPU removes. It prints milliseconds per step and the
ratio to standard training, best of ``--repeat`` rounds (one run: compare within it).
``benchmarks/count_ops.py`` counts the kernels the same steps launch.

    python benchmarks/bench_overhead.py [--steps 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import torch
from count_ops import rows as method_rows  # the script beside this one (sys.path[0])

import clipkit as ck


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300, help="training steps per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each row's best")
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n = 128 * args.steps
    x = torch.rand(n, 16, generator=g)
    y = torch.randint(4, (n,), generator=g)
    rows = method_rows()  # count_ops.py's methods
    for method, activation in rows.values():  # warm-up: torch's lazy initialisations
        ck.fit(ck.models.mlp([16, 8, 8, 4], activation=activation, seed=0), (x[:640], y[:640]),
               method=method, epochs=1, optimizer="sgd", progress=False, device="cpu")
    best = dict.fromkeys(rows, float("inf"))
    for _ in range(args.repeat):
        for name, (method, activation) in rows.items():
            model = ck.models.mlp([16, 8, 8, 4], activation=activation, seed=0)
            t = time.perf_counter()
            ck.fit(model, (x, y), method=method, epochs=1, batch_size=128, optimizer="sgd",
                   lr=0.1, seed=0, progress=False, device="cpu")
            best[name] = min(best[name], time.perf_counter() - t)
    base = best["standard"]
    print(f"torch {torch.__version__}, MLP 16-8-8-4, batch 128, 1 thread, {args.steps} steps")
    print("| method | ms per step | ÷ standard |\n|---|---|---|")
    for name, t in best.items():
        print(f"| {name} | {t / args.steps * 1e3:.2f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()

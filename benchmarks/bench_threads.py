"""How many torch threads should the notebooks use? Their default training, 1 against 2 threads.

Times the training step of each notebook at its default sizes (a part of its epochs; the
data are random tensors of the notebook's shapes: speed does not depend on the values):

* classification.ipynb: MLP 784-200-80-10 (sigmoid), the authors' CLIP preset, 3,000
  images, batch 128, SGD (one vectorised fit_path of one λ);
* regression.ipynb: MLP 1-64-64-1 (ReLU), CLIP, 100 points, batch 100, Adam;
* lambda_to_constant.ipynb: MLP 1-64-64-1, CLIP p = 1 over its 8 λ as one fit_path,
  60 points full batch.

each with 1 and 2 torch threads, on a quiet machine and beside one busy process (a
spinning Python process: another notebook, a sweep worker, a compile). Prints seconds
and the ratio 2 threads ÷ 1 thread per row (below 1: two threads are faster).

    python benchmarks/bench_threads.py [--repeats 3] [--no-busy]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from collections.abc import Callable

import torch

import clipkit as ck


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def workloads() -> dict[str, Callable[[], None]]:
    g = torch.Generator().manual_seed(0)
    xc, yc = torch.rand(3000, 784, generator=g), torch.randint(0, 10, (3000,), generator=g)
    xr = torch.rand(100, 1, generator=g) * 2 - 1
    yr = torch.sin(6 * xr)
    xt, yt = xr[:60], yr[:60]

    def classification() -> None:
        ck.fit_path(lambda: ck.models.classifier("mlp", hidden=[200, 80], activation="sigmoid"),
                    (xc, yc), ck.CLIP.authors(), lam=[0.1], seed=[0], epochs=1,
                    batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, progress=False)

    def regression() -> None:
        ck.fit(ck.models.mlp([1, 64, 64, 1], activation="relu", seed=0), (xr, yr),
               ck.CLIP(lam=0.01, pairs=64, ascent_steps=3), epochs=100, batch_size=100,
               lr=0.01, seed=0, progress=False)

    def theory() -> None:
        ck.fit_path(lambda: ck.models.mlp([1, 64, 64, 1], activation="relu"), (xt, yt),
                    ck.CLIP(power=1, pairs=64, ascent_steps=3),
                    lam=[0.01, 0.03, 0.1, 0.3, 0.6, 1.0, 2.0, 4.0], seed=[0], epochs=50,
                    batch_size=60, lr=0.01, progress=False)

    return {"classification (1 epoch)": classification, "regression (100 epochs)": regression,
            "lambda_to_constant (50 epochs)": theory}


def best_time(fn: Callable[[], None], threads: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-busy", action="store_true", help="skip the busy-machine rows")
    args = parser.parse_args()
    print(f"{'workload':32s} {'machine':6s} {'1 thread':>9s} {'2 threads':>9s} {'2 ÷ 1':>6s}")
    for name, fn in workloads().items():
        fn()  # warm-up: first-call allocations and kernels
        for busy in [False] if args.no_busy else [False, True]:
            stop = mp.Event()
            spinner = mp.Process(target=_spin, args=(stop,), daemon=True) if busy else None
            if spinner:
                spinner.start()
            try:
                one = best_time(fn, 1, args.repeats)
                two = best_time(fn, 2, args.repeats)
            finally:
                if spinner:
                    stop.set()
                    spinner.join()
            print(f"{name:32s} {'busy' if busy else 'quiet':6s} {one:9.2f} {two:9.2f} "
                  f"{two / one:6.2f}")


if __name__ == "__main__":
    main()
